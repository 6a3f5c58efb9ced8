"""Faults: `kill -9` of an actor's process in the middle of a run.

A rollout worker (vLLM engine, gym env runner): the run must reach its last step; Ray restarts
the worker, the trainer re-syncs it and the pipeline re-issues what it held, so the ledger shows
every prompt trained exactly once (none lost, none twice) and the run counts one restart.

A learner rank: its optimizer state is gone, so the run ends (exit 1) with a message naming the
rank and the checkpoint to resume from.
"""

from __future__ import annotations

import collections
import os
import signal

import pytest
from helpers import actor_pids, launch, log_of, rows, steps_logged, wait_until

pytestmark = pytest.mark.integration
STEPS = 14
KILL_AT = 5


def kill_mid_run(run, actor_class: str, at_step: int, *overrides: str):
    """Launch a run and, once step `at_step` is logged, kill -9 its one `actor_class` process."""
    proc = launch(run, *overrides)
    wait_until(
        proc,
        lambda: steps_logged(run) >= at_step and actor_pids(proc, actor_class),
        what=f"step {at_step}",
    )
    [pid] = actor_pids(proc, actor_class)
    os.kill(pid, signal.SIGKILL)
    return proc


def test_vllm_engine_killed_mid_run(tmp_path):
    run = tmp_path / "engine"
    # Staleness 1: the engine holds the next step's prompts when it dies.
    proc = kill_mid_run(
        run,
        "VllmEngine",
        KILL_AT,
        "+experiment=grpo",
        f"trainer.total_steps={STEPS}",
        "rollout.max_staleness=1",
    )
    assert proc.wait(timeout=600) == 0, log_of(run)[-3000:]

    metrics = rows(run)
    assert [r["step"] for r in metrics] == list(range(1, STEPS + 1))
    assert metrics[-1]["fault/restarts"] == 1
    assert sum(r.get("fault/recovery_s", 0) for r in metrics) > 0
    ledger = rows(run, "ledger.jsonl")
    trained = collections.Counter(r["prompt_id"] for r in ledger if r["status"] == "trained")
    assert max(trained.values()) == 1, "a prompt was trained twice"
    assert sorted(trained) == list(range(STEPS * 16)), "a prompt was lost"
    assert all(r["staleness"] <= 1 for r in ledger)
    assert "fault: rollout worker 0 is back" in log_of(run)


def test_gym_env_runner_killed_mid_run(tmp_path):
    run = tmp_path / "gym"
    proc = kill_mid_run(
        run, "GymRunner", KILL_AT, "+experiment=cartpole_ppo", "trainer.total_steps=12"
    )
    assert proc.wait(timeout=600) == 0, log_of(run)[-3000:]
    metrics = rows(run)
    assert [r["step"] for r in metrics] == list(range(1, 13))
    assert metrics[-1]["fault/restarts"] == 1
    # The restarted runner learns on: returns keep improving after the fault.
    assert metrics[-1]["env/episode_return_mean"] > metrics[1]["env/episode_return_mean"]


def test_learner_rank_killed_ends_the_run_with_a_resume_hint(tmp_path):
    run = tmp_path / "learner"
    proc = kill_mid_run(
        run,
        "LearnerWorker",
        3,
        "+experiment=cartpole_ppo",
        "trainer.total_steps=40",
        "trainer.save_every=2",
    )
    assert proc.wait(timeout=300) == 1, log_of(run)[-3000:]
    log = log_of(run)
    assert "learner rank 0 died" in log and "to resume from" in log and "checkpoints/step-" in log
    assert "Traceback" not in log
