"""Rule rewards usable as `reward.fn=rlhf.reward.rules:<name>`: `fn(prompt, completion, **fields)`."""

from __future__ import annotations

import re
from fractions import Fraction

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def exact_match(prompt: str, completion: str, answer: str = "", **_) -> float:
    """1.0 when the completion equals the answer after stripping whitespace."""
    return float(completion.strip() == str(answer).strip())


def _as_number(text: str) -> Fraction | None:
    found = _NUMBER.findall(text.replace(",", ""))
    if not found:
        return None
    try:
        return Fraction(found[-1])
    except (ValueError, ZeroDivisionError):
        return None


def math_equivalent(prompt: str, completion: str, answer: str = "", **_) -> float:
    """1.0 when the last number in the completion equals the answer as a rational number
    ('0.5' == '1/2' == '2/4'), else exact string match."""
    want, got = _as_number(str(answer)), _as_number(completion)
    if want is not None and got is not None:
        return float(want == got)
    return exact_match(prompt, completion, answer)


def boxed_format(prompt: str, completion: str, **_) -> float:
    """1.0 when the completion puts its final answer in \\boxed{...}."""
    return float(bool(re.search(r"\\boxed\{[^{}]+\}", completion)))
