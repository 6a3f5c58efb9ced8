"""Every LLM algorithm preset on the tiny model: the sweep `+experiment=grpo algo=<preset>
trainer.total_steps=8` for every preset, run in one process on one set of roles (Ray, the vLLM
engine, the reward actor start once; each preset gets its own learner ranks, pipeline, logger
and run folder), then one test per preset reading its run. The CLI itself (and a Hydra sweep
through it) is tested in tests/e2e; what this module tests is each algorithm.

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
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
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


def _overrides(preset: str) -> list[str]:
    return [
        "+experiment=grpo",
        f"algo={preset}",
        f"trainer.total_steps={STEPS}",
        "logger.wandb.mode=disabled",
        "trainer.report=false",
        "learner.diagnostics_every=1",  # update_gain on every step, read below
    ]


def _next_preset(trainer, placement, cfg, resolved, run_dir: Path, model_path: str, runtime_env):
    """A Trainer for the next preset on the previous one's engines, reward actors and learner
    bundles: the learner ranks are rebuilt, since the algorithm shapes them (loss, optimizer,
    schedule, a critic for PPO)."""
    import ray

    from rlhf.data import PromptSource
    from rlhf.learner.group import LearnerGroup
    from rlhf.metrics import RunLogger, run_identity
    from rlhf.pipeline import RolloutPipeline
    from rlhf.trainer import Trainer

    trainer.pipeline.drain()
    for actor in trainer.learners.actors:
        ray.kill(actor)
    r = cfg.rollout
    learners = LearnerGroup(
        cfg.learner,
        cfg.algo,
        cfg.model,
        model_path,
        placement.learner,
        rows_per_step=r.prompts_per_step * r.samples_per_prompt,
        temperature=r.temperature,
        total_steps=cfg.trainer.total_steps,
        seed=cfg.seed,
        runtime_env=runtime_env,
    )
    pipeline = RolloutPipeline(
        r,
        PromptSource(cfg.data, cfg.seed, tokenizer_path=model_path),
        trainer.pipeline.engines,
        trainer.pipeline.rewards,
        seed=cfg.seed,
        ledger_path=run_dir / "ledger.jsonl",
        score_episodes=cfg.env.score_transcript,
    )
    name, group, tags = run_identity(cfg)
    logger = RunLogger(
        cfg.logger,
        run_dir,
        config=resolved,
        total_steps=cfg.trainer.total_steps,
        name=name,
        group=group,
        tags=tags,
        primary_metric="reward/mean",
    )
    return Trainer(
        cfg.trainer,
        cfg.algo,
        pipeline=pipeline,
        rollout=trainer.rollout,
        learners=learners,
        logger=logger,
        run_dir=run_dir,
        evaluator=trainer.evaluator,
        evaluator_rewards=trainer.evaluator_rewards,
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import ray

    from rlhf import placement as placement_module
    from rlhf.compose import compose
    from rlhf.data import PromptSource
    from rlhf.train import build_trainer, init_ray, resolve_model_path

    out = tmp_path_factory.mktemp("presets")
    placements = []  # the one build_trainer makes, whose learner bundles every preset reuses

    def recording(cfg, *args, **kwargs):
        placements.append(create_placement(cfg, *args, **kwargs))
        return placements[-1]

    create_placement = placement_module.create_placement
    configs = {p: compose(*_overrides(p)) for p in PRESETS}
    cfg, resolved = configs[PRESETS[0]]
    model_path = resolve_model_path(cfg)
    if ray.is_initialized():  # left by another module (a .remote call auto-initialises Ray)
        ray.shutdown()
    runtime_env = init_ray(cfg)
    try:
        trainer = None
        for preset, (cfg, resolved) in configs.items():
            run_dir = out / preset
            if trainer is None:
                prompts = PromptSource(cfg.data, cfg.seed, tokenizer_path=model_path)
                with pytest.MonkeyPatch.context() as mp:
                    mp.setattr(placement_module, "create_placement", recording)
                    trainer = build_trainer(
                        cfg, run_dir, resolved, prompts, model_path, runtime_env
                    )
            else:
                trainer = _next_preset(
                    trainer, placements[0], cfg, resolved, run_dir, model_path, runtime_env
                )
            trainer.fit()
    finally:
        ray.shutdown()
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
