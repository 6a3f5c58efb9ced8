"""Rule rewards usable as `reward.fn=rlhf.reward.rules:<name>`: `fn(prompt, completion, **fields)`.

Math answers are checked by rlhf/reward/math.py (math-verify), not by regexes here.
"""

from __future__ import annotations

import re


def exact_match(prompt: str, completion: str, answer: str = "", **_) -> float:
    """1.0 when the completion equals the answer after stripping whitespace."""
    return float(completion.strip() == str(answer).strip())


def math_equivalent(prompt: str, completion: str, answer: str = "", **_) -> float:
    """1.0 when the completion's final answer is mathematically equal to the answer
    ('0.5' == '1/2' == '2/4'); see rlhf.reward.math.math_reward."""
    from rlhf.reward.math import math_reward  # math-verify + sympy load only when used

    return math_reward(prompt, completion, answer)


def boxed_format(prompt: str, completion: str, **_) -> float:
    """1.0 when the completion puts its final answer in \\boxed{...}."""
    return float(bool(re.search(r"\\boxed\{[^{}]+\}", completion)))


def length_penalty(prompt: str, completion: str, max_chars: int = 0, **_) -> float:
    """-(characters beyond max_chars) / max_chars, 0 within it (a composition term; max_chars
    is a dataset column, 0 disables)."""
    n = int(max_chars or 0)
    return -max(0, len(completion) - n) / n if n > 0 else 0.0
