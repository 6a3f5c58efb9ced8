"""Faults: SIGTERM (a scheduler's preemption notice) while the run is still starting up, with
Ray up and the learner ranks built, before the training loop handles signals itself: the run
exits with 128 + 15 and a one-paragraph message, no traceback, and leaves no Ray process behind
(the default action would kill the driver alone and orphan its cluster)."""

from __future__ import annotations

import signal
import time

import pytest
from helpers import alive, launch, log_of, run_processes, wait_until

pytestmark = pytest.mark.integration


def test_sigterm_during_startup_exits_cleanly_with_a_message(tmp_path):
    run = tmp_path / "startup"
    proc = launch(run, "+experiment=grpo", "trainer.total_steps=2", "eval=off")
    wait_until(proc, lambda: "learner ranks ready" in log_of(run), what="the learner ranks")
    tree = run_processes(proc)
    assert len(tree) > 3, "expected the driver's local Ray cluster and actors under it"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log_of(run)[-3000:]
    log = log_of(run)
    assert "rlhf: stopped by SIGTERM outside the training loop" in log
    assert "Traceback" not in log, log[-3000:]
    deadline = time.monotonic() + 30
    while alive(tree[1:]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not alive(tree[1:]), alive(tree[1:])
    assert not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text()
