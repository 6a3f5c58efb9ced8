"""reward.kind=math: final-answer extraction and equivalence checking with math-verify.

`math_reward(prompt, completion, answer)` is 1.0 when the completion's final answer equals the
reference mathematically (`1/2` == `0.5` == `\\frac{1}{2}` == `2/4`), else 0.0. The answer is
taken from the last `\\boxed{...}` (braces balanced), else the text after the last `####`
(GSM8K style), else the last number. Equivalence is math-verify's `parse` + `verify` (sympy),
not hand-written regexes.

Timeouts: math-verify bounds each parse/verify with `signal.alarm`, which works only on a main
thread; reward workers (rlhf/reward/pool.py) run calls on their main thread, so the library's
timeouts are on there, and off (the worker's own kill-on-timeout still bounds the call) when
called from any other thread.
"""

from __future__ import annotations

import re
import threading

from math_verify import parse, verify

_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?")
PARSE_TIMEOUT_S = 2  # math-verify's per-parse limit (whole seconds: signal.alarm)
VERIFY_TIMEOUT_S = 2


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`), nested braces balanced."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth, j = 1, i
    while j < len(text):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j].strip()
        j += 1
    return None  # unbalanced: no answer rather than a guess


def extract_answer(text: str) -> str | None:
    """The final answer in `text`: last \\boxed{}, else after the last '####', else the last
    number; None when there is none."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed or None
    if "####" in text:
        tail = text.rsplit("####", 1)[1].strip()
        if tail:
            return tail.splitlines()[0].strip()
    found = _NUMBER.findall(text)
    return found[-1].replace(",", "") if found else None


def _timeouts() -> tuple[int | None, int | None]:
    if threading.current_thread() is threading.main_thread():
        return PARSE_TIMEOUT_S, VERIFY_TIMEOUT_S
    return None, None  # signal.alarm is unavailable off the main thread


def equivalent(predicted: str, reference: str) -> bool:
    """True when math-verify finds the two answers equal."""
    parse_t, verify_t = _timeouts()
    gold = parse(f"${_unbox(reference)}$", parsing_timeout=parse_t)
    pred = parse(f"${predicted}$", parsing_timeout=parse_t)
    if not gold or not pred:
        return predicted.strip() == _unbox(reference).strip()
    return bool(verify(gold, pred, timeout_seconds=verify_t))


def _unbox(answer: str) -> str:
    boxed = last_boxed(answer)
    return boxed if boxed is not None else answer


def math_reward(prompt: str, completion: str, answer: str = "", **_) -> float:
    """1.0 when the completion's final answer is equivalent to `answer`, else 0.0."""
    del prompt
    predicted = extract_answer(completion)
    if predicted is None or not str(answer).strip():
        return 0.0
    return float(equivalent(predicted, str(answer)))


def boxed_math_reward(prompt: str, completion: str, answer: str = "", **_) -> float:
    """Like math_reward, but only a `\\boxed{}` answer counts (the format is part of the task)."""
    del prompt
    predicted = last_boxed(completion)
    if not predicted or not str(answer).strip():
        return 0.0
    return float(equivalent(predicted, str(answer)))
