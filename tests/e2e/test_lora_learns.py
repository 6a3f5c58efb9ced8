"""The LoRA preset learns the default task: `python -m rlhf.train +experiment=grpo_lora` (rank-8
adapter on the 7 projections plus lm_head trained in full, model.lora.train_lm_head), cut to the
fewest steps that show the project's bar, a reward rise of at least 0.2 (first fifth -> last
fifth of reward/mean), on seed 0.

Margin (README "LoRA", docs/lora.md): the lr is constant, so a shorter run is the prefix of the
300-step one; seed 0's first 50 steps rose +0.318 (0.198 -> 0.516; 40 steps: +0.210, too close to
the bar; 60: +0.412). The engines serve what the learners trained, adapter and lm_head:
rollout/logprob_diff stays at the float32 level over the run (2.6e-7 at most in 300 steps).
"""

import json

import pytest
from cli_run import train

pytestmark = pytest.mark.e2e
STEPS = 50
REQUIRED_RISE = 0.2


def test_lora_preset_learns(tmp_path):
    run_dir = tmp_path / "run"
    proc = train(
        run_dir, "+experiment=grpo_lora", f"trainer.total_steps={STEPS}", "trainer.report=false"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    rewards = [m["reward/mean"] for m in metrics]
    assert len(rewards) == STEPS
    fifth = STEPS // 5
    first, last = sum(rewards[:fifth]) / fifth, sum(rewards[-fifth:]) / fifth
    assert last - first >= REQUIRED_RISE, f"reward first fifth {first:.3f} -> last fifth {last:.3f}"
    diff = max(m["rollout/logprob_diff"] for m in metrics if "rollout/logprob_diff" in m)
    assert diff < 1e-4, f"the engines did not serve the learners' adapter and lm_head: {diff:.2e}"
