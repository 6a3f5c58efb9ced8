"""Math answers: extraction (\\boxed{}, ####, last number) and math-verify equivalence, on
right, equivalent, wrong, malformed and adversarial answers; the fractions task."""

import threading
import time

import pytest

from rlhf.reward.math import boxed_math_reward, extract_answer, last_boxed, math_reward
from rlhf.tasks import get_task


@pytest.mark.parametrize(
    "text, want",
    [
        (r"so \boxed{1/2}", "1/2"),
        (r"\boxed{1} then \boxed{\frac{3}{4}}", r"\frac{3}{4}"),  # the last box, nested braces
        (r"\fbox{7}", "7"),
        ("work... #### 1,234", "1,234"),
        ("first 3, then 2,500 apples", "2500"),  # last number, thousands separator dropped
        ("no answer here", None),
        (r"\boxed{}", None),
        (r"\boxed{1/2", "1/2"),  # unbalanced box: falls back to the last number
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_last_boxed_unbalanced_is_none():
    assert last_boxed(r"\boxed{\frac{1}{2}") is None


@pytest.mark.parametrize(
    "completion, answer, want",
    [
        (r"\boxed{0.5}", "1/2", 1.0),
        (r"\boxed{1/2}", r"\boxed{0.5}", 1.0),
        (r"\boxed{\frac{1}{2}}", "0.5", 1.0),
        (r"\boxed{2/4}", "1/2", 1.0),
        (r"\boxed{1.50}", "3/2", 1.0),
        ("The answer is 12", "12", 1.0),
        ("#### 7", "7.0", 1.0),
        (r"\boxed{0.51}", "1/2", 0.0),  # close is wrong
        (r"\boxed{-1/2}", "1/2", 0.0),
        (r"\boxed{1/0}", "1/2", 0.0),  # malformed
        (r"\boxed{}}}{{", "1", 0.0),
        ("", "1", 0.0),
        (r"\boxed{1}", "", 0.0),  # no reference: nothing can be right
        ("1/2 " * 200 + r"\boxed{" + "9" * 300 + "}", "1/2", 0.0),  # huge number
    ],
)
def test_math_reward(completion, answer, want):
    assert math_reward("", completion, answer) == want


def test_boxed_math_reward_needs_the_box():
    assert boxed_math_reward("", r"\boxed{1.5}", r"\boxed{3/2}") == 1.0
    assert boxed_math_reward("", "1.5", r"\boxed{3/2}") == 0.0


def test_adversarial_expression_is_bounded_in_time():
    # A power tower: sympy would take forever to evaluate it exactly; math-verify's timeouts
    # (main thread) bound it.
    t0 = time.monotonic()
    assert math_reward("", r"\boxed{9^{9^{9^{9^{9}}}}}", "1") == 0.0
    assert time.monotonic() - t0 < 10


def test_works_off_the_main_thread():
    # math-verify's signal timeouts only work on a main thread; elsewhere they are turned off
    out = []
    t = threading.Thread(target=lambda: out.append(math_reward("", r"\boxed{0.5}", "1/2")))
    t.start()
    t.join()
    assert out == [1.0]


def test_fractions_task_accepts_equivalent_forms():
    task = get_task("fractions")
    problems = task.all_problems()
    assert {p.prompt for p in problems} == {f"{a}/{b}=" for a in range(10) for b in (1, 2, 4)}
    # both written forms of a non-integral value are in the warm-up table
    assert {p.answer for p in problems if p.prompt == "3/2="} == {r"\boxed{3/2}", r"\boxed{1.5}"}
    assert task.score(r"\boxed{6/4}", r"\boxed{1.5}") == 1.0
    assert task.score(r"\boxed{1.5}", r"\boxed{3/2}") == 1.0
    assert task.score(r"\boxed{1.25}", r"\boxed{3/2}") == 0.0
    assert task.score("1.5", r"\boxed{3/2}") == 0.0  # the box is part of the format
    assert task.score(r"\boxed{1.5}x", r"\boxed{3/2}") == 0.0  # nothing around it
    assert task.score(r"\boxed{1}\boxed{1.5}", r"\boxed{3/2}") == 0.0
    assert task.score(r"\boxed{1.5}}", r"\boxed{3/2}") == 0.0
    for p in problems:
        assert set(p.prompt + p.answer) <= set(task.alphabet)
        assert len(p.answer) <= task.max_answer_chars
