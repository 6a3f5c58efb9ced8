"""The same loop under other configurations: colocated placement + ZeRO-3 + a KL loss against a
frozen reference model (Dr.GRPO), and REINFORCE++ with KL as a reward penalty."""

import json

import pytest
from cli_run import train

pytestmark = pytest.mark.integration


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
    proc = train(
        run_dir,
        "+experiment=grpo",
        "trainer.total_steps=3",
        "logger.wandb.mode=disabled",
        *overrides,
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
