"""Reward calls: raising, hanging and NaN functions give the fallback and are counted."""

import math
import time

from rlhf.batch import Sample
from rlhf.config import RewardConfig
from rlhf.reward import rules
from rlhf.reward.actor import RewardActor, call_with_timeouts, reward_metrics


def test_call_with_timeouts_classifies_each_call():
    def boom():
        raise RuntimeError("bad reward")

    calls = [lambda: 1.0, boom, lambda: time.sleep(5) or 1.0, lambda: 0.5]
    t0 = time.monotonic()
    out = call_with_timeouts(calls, timeout_s=0.3, threads=2)
    assert time.monotonic() - t0 < 2.0
    assert out[0] == (1.0, None) and out[3] == (0.5, None)
    assert out[1][1].startswith("exception: RuntimeError: bad reward")
    assert out[2] == (None, "timeout")


def test_hung_calls_do_not_starve_the_rest():
    # Every thread gets stuck once; replacements must still finish the queue.
    calls = [lambda: time.sleep(3)] * 2 + [lambda i=i: float(i) for i in range(10)]
    out = call_with_timeouts(calls, timeout_s=0.2, threads=2)
    assert [e for _, e in out[:2]] == ["timeout", "timeout"]
    assert [v for v, _ in out[2:]] == [float(i) for i in range(10)]


def _bad_fn(prompt, completion, answer="", **_):
    if prompt == "raise":
        raise ValueError("nope")
    if prompt == "hang":
        time.sleep(5)
    if prompt == "nan":
        return math.nan
    if prompt == "str":
        return "1.0"
    return 1.0


def test_reward_actor_falls_back_and_counts(monkeypatch):
    import sys
    import types

    mod = types.ModuleType("_bad_rewards")
    mod.fn = _bad_fn
    monkeypatch.setitem(sys.modules, "_bad_rewards", mod)
    actor = RewardActor(RewardConfig(fn="_bad_rewards:fn", timeout_s=0.3, fallback=-1.0), "addition")
    prompts = ["ok", "raise", "hang", "nan", "str", "ok"]
    samples = actor.score([Sample(group_id=i // 3, prompt=p) for i, p in enumerate(prompts)])
    assert [s.reward for s in samples] == [1.0, -1.0, -1.0, -1.0, -1.0, 1.0]
    m = reward_metrics(samples)
    assert (m["reward/errors"], m["reward/timeouts"], m["reward/nans"]) == (2.0, 1.0, 1.0)


def test_task_reward_and_all_equal_groups():
    actor = RewardActor(RewardConfig(fn="task"), "addition")
    samples = actor.score([Sample(group_id=0, prompt="1+2=", response="3", answer="3"),
                           Sample(group_id=0, prompt="1+2=", response="4", answer="3"),
                           Sample(group_id=1, prompt="2+2=", response="5", answer="4"),
                           Sample(group_id=1, prompt="2+2=", response="1", answer="4")])
    assert [s.reward for s in samples] == [1.0, 0.0, 0.0, 0.0]
    assert reward_metrics(samples)["reward/all_equal_group_frac"] == 0.5


def test_rules():
    assert rules.exact_match("", " 42 ", answer="42") == 1.0
    assert rules.math_equivalent("", "so the answer is 0.5", answer="1/2") == 1.0
    assert rules.math_equivalent("", "it is 3", answer="4") == 0.0
    assert rules.boxed_format("", r"x = \boxed{7}") == 1.0 and rules.boxed_format("", "7") == 0.0
