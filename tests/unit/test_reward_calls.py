"""Reward calls run in killable worker processes: raising, hanging, exiting, SystemExit and NaN
functions give the fallback, are classified and counted, and leave no worker behind."""

import os
import time

import pytest

from rlhf.batch import Sample
from rlhf.config import REWARD_KINDS, RewardComponent, RewardConfig
from rlhf.reward import rules
from rlhf.reward.actor import SCORERS, RewardActor, reward_metrics


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie is gone for our purposes
    except FileNotFoundError:
        return False


@pytest.fixture
def pid_log(tmp_path, monkeypatch):
    path = tmp_path / "pids.log"
    monkeypatch.setenv("RLHF_TEST_REWARD_PIDS", str(path))
    return path


def test_every_fault_is_classified_and_bounded_in_time(pid_log):
    actor = RewardActor(
        RewardConfig(fn="reward_fns:misbehave", timeout_s=0.5, workers=2, fallback=-1.0), "addition"
    )
    prompts = ["ok", "raise", "hang", "nan", "str", "exit", "sysexit", "interrupt", "ok"]
    t0 = time.monotonic()
    out = actor.score(
        [Sample(group_id=i, prompt=p, response="1", answer="1") for i, p in enumerate(prompts)]
    )
    elapsed = time.monotonic() - t0
    errors = {s.prompt: s.info.get("reward_error") for s in out}
    assert [s.reward for s in out] == [1.0] + [-1.0] * 7 + [1.0]
    assert errors["ok"] is None
    assert errors["raise"] == "exception: ValueError: nope"
    assert errors["hang"] == "timeout"
    assert errors["nan"] == "nan" and errors["str"] == "bad type str"
    assert errors["exit"] == "crash: worker exited with code 3"
    # BaseExceptions are errors at once, not timeouts
    assert errors["sysexit"] == "exception: SystemExit: 4"
    assert errors["interrupt"].startswith("exception: KeyboardInterrupt")
    assert elapsed < 0.5 + 1.5, elapsed  # one timeout, not one per BaseException
    m = reward_metrics(out)
    assert (m["reward/errors"], m["reward/timeouts"], m["reward/nans"], m["reward/crashes"]) == (
        4.0,
        1.0,
        1.0,
        1.0,
    )
    # the hung and the exited workers are gone (killed / dead), not left running
    pids = {line.split()[1]: int(line.split()[0]) for line in pid_log.read_text().splitlines()}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(pids["hang"]) or _alive(pids["exit"])):
        time.sleep(0.05)
    assert not _alive(pids["hang"]) and not _alive(pids["exit"])
    # the pool replaced them: the actor keeps scoring
    again = actor.score([Sample(group_id=0, prompt="ok", response="2", answer="2")])
    assert again[0].reward == 1.0
    actor.close()
    assert not any(_alive(p) for p in pids.values())


def test_hung_calls_do_not_starve_the_rest():
    actor = RewardActor(
        RewardConfig(fn="reward_fns:misbehave", timeout_s=0.3, workers=2), "addition"
    )
    samples = [Sample(group_id=0, prompt="hang")] * 2 + [
        Sample(group_id=1, prompt="ok", response=str(i), answer=str(i % 2)) for i in range(10)
    ]
    out = actor.score(samples)
    assert [s.info.get("reward_error") for s in out[:2]] == ["timeout", "timeout"]
    assert [s.reward for s in out[2:]] == [float(i % 2 == i) for i in range(10)]
    actor.close()


def test_task_reward_and_all_equal_groups():
    actor = RewardActor(RewardConfig(fn="task"), "addition")
    samples = actor.score(
        [
            Sample(group_id=0, prompt="1+2=", response="3", answer="3"),
            Sample(group_id=0, prompt="1+2=", response="4", answer="3"),
            Sample(group_id=1, prompt="2+2=", response="5", answer="4"),
            Sample(group_id=1, prompt="2+2=", response="1", answer="4"),
        ]
    )
    assert [s.reward for s in samples] == [1.0, 0.0, 0.0, 0.0]
    assert reward_metrics(samples)["reward/all_equal_group_frac"] == 0.5
    actor.close()


def test_composed_reward_is_the_weighted_sum_and_logs_each_component():
    cfg = RewardConfig(
        components=[
            RewardComponent(kind="math", weight=1.0),
            RewardComponent(fn="rlhf.reward.rules:boxed_format", name="format", weight=0.2),
            RewardComponent(fn="reward_fns:misbehave", name="flaky", weight=0.5),
        ],
        timeout_s=5.0,
        fallback=0.0,
    )
    actor = RewardActor(cfg, "fractions")
    out = actor.score(
        [
            Sample(group_id=0, prompt="ok", response=r"\boxed{0.5}", answer=r"\boxed{1/2}"),
            Sample(group_id=0, prompt="ok", response="1/2", answer=r"\boxed{1/2}"),
            Sample(group_id=1, prompt="raise", response=r"\boxed{3}", answer=r"\boxed{2}"),
        ]
    )
    # math + 0.2 * format + 0.5 * (completion == answer)
    assert [s.reward for s in out] == pytest.approx([1.2, 1.0, 0.2])
    assert out[0].info["reward_components"] == {"math": 1.0, "format": 1.0, "flaky": 0.0}
    assert out[2].info["reward_error"] == "exception: ValueError: nope"
    assert out[2].info["reward_error_component"] == "flaky"
    m = reward_metrics(out)
    assert m["reward/math"] == pytest.approx(2 / 3) and m["reward/format"] == pytest.approx(2 / 3)
    assert m["reward/errors"] == 1.0
    actor.close()


def test_registry_matches_config_kinds():
    assert tuple(SCORERS) == REWARD_KINDS


def test_rules():
    assert rules.exact_match("", " 42 ", answer="42") == 1.0
    assert rules.math_equivalent("", "so the answer is 0.5", answer="1/2") == 1.0
    assert rules.math_equivalent("", "it is 3", answer="4") == 0.0
    assert rules.boxed_format("", r"x = \boxed{7}") == 1.0 and rules.boxed_format("", "7") == 0.0
    assert rules.length_penalty("", "abcdef", max_chars=4) == -0.5
    assert rules.length_penalty("", "abc", max_chars=4) == 0.0


def test_workers_die_when_the_actor_process_is_killed(pid_log):
    """SIGKILL of the process that owns the pool (no cleanup runs): its hung workers die too."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    script = (
        "from rlhf.batch import Sample\nfrom rlhf.config import RewardConfig\n"
        "from rlhf.reward.actor import RewardActor\n"
        "a = RewardActor(RewardConfig(fn='reward_fns:misbehave', timeout_s=600, workers=2), "
        "'addition')\n"
        "a.score([Sample(group_id=0, prompt='hang')] * 2)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": f"{Path(__file__).parent}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    owner = subprocess.Popen([sys.executable, "-c", script], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not pid_log.exists() or len(pid_log.read_text().splitlines()) < 2
    ):
        time.sleep(0.05)
    workers = [int(line.split()[0]) for line in pid_log.read_text().splitlines()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.05)
    assert not [p for p in workers if _alive(p)]


def test_a_worker_killed_while_idle_costs_nothing():
    """pebble marks the whole pool broken when a worker dies between calls (the OOM killer, a
    stray kill -9): the scorer starts a fresh pool and scores the next call as usual (found by
    scripts/chaos.py: the run used to end there)."""
    import multiprocessing
    import os
    import signal
    from types import SimpleNamespace

    from rlhf.reward.pool import FunctionScorer

    scorer = FunctionScorer("task", "addition", timeout_s=5.0, workers=2)
    samples = [SimpleNamespace(prompt="1+2=", response=r, answer="3", fields={}) for r in "34"]
    try:
        assert scorer.score(samples) == [(1.0, None), (0.0, None)]
        idle = multiprocessing.active_children()[0]
        os.kill(idle.pid, signal.SIGKILL)
        idle.join(timeout=5)
        assert scorer.score(samples) == [(1.0, None), (0.0, None)]
    finally:
        scorer.close()
