"""The same loop under other configurations: colocated placement + ZeRO-3 + a KL loss against a
frozen reference model (Dr.GRPO), and REINFORCE++ with KL as a reward penalty."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "overrides,expect",
    [
        (
            ["algo=dr_grpo", "algo.kl_coef=0.05", "placement=colocated", "learner.zero_stage=3"],
            ["algo/kl", "algo/kl_ref"],
        ),
        (["algo=reinforce_pp", "algo.kl_coef=0.05", "learner.zero_stage=1"], ["algo/kl_ref"]),
    ],
)
def test_variant_runs(tmp_path, tiny_model_path, overrides, expect):
    run_dir = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.train",
            "+experiment=grpo",
            "trainer.total_steps=3",
            "logger.wandb.mode=disabled",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in expect:
        assert all(key in r for r in rows), key
    # The reference model starts equal to the policy: KL is ~0 at step 1 and grows after updates.
    assert rows[0]["algo/kl_ref"] < 1e-4 < rows[-1]["algo/kl_ref"]
    # Weights reached the engines every step.
    assert all(r["rollout/logprob_diff"] < 1e-4 for r in rows)
