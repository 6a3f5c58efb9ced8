"""Fault: a NaN injected into the policy loss (learner rank 0, chosen steps).

A non-finite loss skips that update on every rank (weights unchanged, counted in
`learner/skipped_updates`) and the run goes on; `trainer.max_skipped_updates` (3) of them in a
row stop it with exit code 1 and a message that says so.
"""

from __future__ import annotations

import os

import pytest
from helpers import ROOT, launch, log_of, rows

pytestmark = pytest.mark.integration


def test_nan_loss_skips_the_update_and_three_in_a_row_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "PYTHONPATH",
        f"{ROOT / 'tests' / 'integration'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    monkeypatch.setenv("RLHF_TEST_NAN_CALLS", "2,5,6,7")  # one loss call per step and rank
    run = tmp_path / "nan"
    proc = launch(
        run,
        "+experiment=grpo",
        "trainer.total_steps=10",
        "algo.policy_loss=nan_loss:nan_on_calls",
        "learner.diagnostics_every=1",  # update_kl on every step, the skipped ones included
    )
    assert proc.wait(timeout=600) == 1, log_of(run)[-3000:]
    assert "3 steps in a row ended in a non-finite loss" in log_of(run)
    metrics = rows(run)
    assert [r["step"] for r in metrics] == [1, 2, 3, 4, 5, 6, 7]
    skipped = [r["step"] for r in metrics if r["learner/skipped_updates"]]
    assert skipped == [2, 5, 6, 7]
    for r in metrics:
        if r["step"] in skipped:
            assert r["algo/update_kl"] == 0.0, "a skipped update changed the policy"
        else:
            assert r["algo/update_kl"] > 0.0
