"""Every LLM algorithm preset, end to end through the CLI on the tiny model: one Hydra sweep
`python -m rlhf.train -m +experiment=grpo algo=<all presets> trainer.total_steps=8` (one
process, so the driver's imports are paid once), then one test per preset reading its run.

A few steps cannot show the reward rise reliably (that is the longer runs' job: README table,
docs/algorithms.md); what each step CAN show is that its update improved the objective it
optimised: `algo/update_gain` = mean_t A_t (log pi_new - log pi_old) over the step's batch,
measured by the learner after the update, is > 0 when above-baseline answers became likelier.
It is 0 if nothing was learned (zero gradients, zero IS weights, lr 0) and negative if a loss had
its sign wrong. PPO also shows its critic learning: `algo/value_update_gain` (value loss on the
step's batch before minus after the update) > 0.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
PRESETS = [
    "grpo",
    "dr_grpo",
    "dapo",
    "gspo",
    "rloo",
    "reinforce_pp",
    "ppo",
    "cispo",
    "gmpo",
    "clip_cov",
    "kl_cov",
]
STEPS = 8


def test_every_llm_preset_is_covered():
    shipped = {p.stem for p in (ROOT / "conf" / "algo").glob("*.yaml")}
    assert shipped == set(PRESETS), "a preset was added or removed: update PRESETS"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("presets")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.train",
            "-m",
            "+experiment=grpo",
            f"algo={','.join(PRESETS)}",
            f"trainer.total_steps={STEPS}",
            "logger.wandb.mode=disabled",
            "trainer.report=false",
            f"hydra.sweep.dir={out}",
            "hydra.sweep.subdir=${algo.name}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _rows(sweep, preset):
    path = sweep / preset / "metrics.jsonl"
    assert path.is_file(), f"{preset}: no metrics.jsonl"
    return [json.loads(line) for line in path.open()]


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_and_each_update_improves_its_objective(sweep, preset):
    rows = _rows(sweep, preset)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for r in rows:
        bad = [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]
        assert not bad, f"{preset} step {r['step']}: non-finite {bad}"
        assert r["learner/skipped_updates"] == 0
        assert r["rollout/logprob_diff"] < 1e-4  # the engines served the learner's weights
    gains = [r["algo/update_gain"] for r in rows]
    assert sum(g > 0 for g in gains) >= STEPS - 1, f"{preset}: update gains {gains}"
    assert sum(gains) > 0
    assert all(0 <= r["algo/clip_frac"] <= 1 for r in rows if "algo/clip_frac" in r)


def test_ppo_critic_learns(sweep):
    # Each update lowers the critic's loss on its batch. (Over 8 steps the value loss on fresh
    # batches does not fall reliably: the reward's variance grows as the policy learns.)
    rows = _rows(sweep, "ppo")
    assert all(
        "algo/value_clip_frac" in r and "algo/value_explained_var" in r and "learner/critic_lr" in r
        for r in rows
    )
    gains = [r["algo/value_update_gain"] for r in rows]
    assert sum(g > 0 for g in gains) >= STEPS - 1, gains


@pytest.mark.parametrize(
    "preset,key",
    [
        ("dapo", "algo/overlong_penalty_mean"),
        ("kl_cov", "algo/kl_cov_frac"),
        ("clip_cov", "algo/cov_clip_frac"),
        ("cispo", "algo/clip_frac_high"),
    ],
)
def test_preset_specific_metrics_are_logged(sweep, preset, key):
    assert all(key in r for r in _rows(sweep, preset)), key
