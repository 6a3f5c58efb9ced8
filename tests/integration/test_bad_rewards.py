"""A run whose reward function raises, hangs past its timeout or returns NaN completes, and
its counters match what the function actually did."""

import collections
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent


def test_run_survives_bad_rewards_and_counts_match(tmp_path, tiny_model_path):
    log = tmp_path / "calls.log"
    run_dir = tmp_path / "run"
    env = {**os.environ, "RLHF_TEST_REWARD_LOG": str(log), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.train", "+experiment=grpo", "trainer.total_steps=3",
         "reward.fn=faulty_rewards:flaky", "reward.timeout_s=0.5", "reward.fallback=0.0",
         "logger.wandb.mode=disabled", f"hydra.run.dir={run_dir}"],
        cwd=HERE.parents[1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    calls = collections.Counter(log.read_text().split())
    assert calls["raise"] and calls["hang"] and calls["nan"], calls
    assert sum(r["reward/errors"] for r in rows) == calls["raise"]
    assert sum(r["reward/timeouts"] for r in rows) == calls["hang"]
    assert sum(r["reward/nans"] for r in rows) == calls["nan"]
