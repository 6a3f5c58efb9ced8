"""Untrusted environments on the real stack: in one run (env.isolation=process), three episodes
of the first step have an environment whose step raises, hangs past env.step_timeout_s, or
kills its own process. Each costs that episode only: it is counted (env/errors, env/timeouts),
kept in the batch with no loss and no weight in its group, and the run goes on to the next step
with every episode whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import ray

from rlhf.batch import collate
from rlhf.config import RootConfig, validate
from rlhf.data import PromptSource
from rlhf.pipeline import sample_seed
from rlhf.train import build_trainer, init_ray, resolve_model_path

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
FAULTS = {(0, 0): "raise", (1, 1): "hang", (2, 2): "exit"}  # (prompt id, sample index) -> fault


def test_env_raise_hang_exit_cost_one_episode_each(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cfg = RootConfig()
    cfg.data.task = "agent_calculator"
    cfg.env.id, cfg.env.isolation, cfg.env.step_timeout_s = (
        "env_faults:faulty_calculator",
        "process",
        3.0,
    )
    cfg.env.kwargs = {str(sample_seed(cfg.seed, pid, i)): kind for (pid, i), kind in FAULTS.items()}
    cfg.env.max_turns, cfg.env.max_tokens_per_turn = 3, 12
    cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt = 4, 4
    cfg.learner.num_ranks, cfg.learner.micro_batch_size = 1, 16
    cfg.trainer.save_final, cfg.trainer.save_every_min, cfg.trainer.report = False, 0, False
    cfg.eval.every = 0
    cfg.logger.wandb.mode = "disabled"
    cfg.ray.num_cpus = 3
    cfg.env.kwargs = {"faults": cfg.env.kwargs}
    cfg = validate(cfg)
    if ray.is_initialized():
        ray.shutdown()
    env = init_ray(cfg)
    try:
        trainer = build_trainer(
            cfg, tmp_path, {}, PromptSource(cfg.data, 0), resolve_model_path(cfg), env
        )
        first, samples = trainer.step()
        trainer.step_index += 1
        second, later = trainer.step()
    finally:
        ray.shutdown()

    lost = {(s.group_id, s.info["sample_index"]): s.info["env_error"] for s in samples}
    assert lost[(0, 0)].startswith("exception: RuntimeError")
    assert lost[(1, 1)] == "timeout"
    assert lost[(2, 2)].startswith("crash")
    assert sum(bool(e) for e in lost.values()) == 3  # the other 13 episodes are whole
    assert first["env/errors"] == 2 and first["env/timeouts"] == 1
    batch = collate(samples)
    for i, s in enumerate(samples):
        if s.info["env_error"]:
            assert batch.action_mask[i].sum() == 0 and batch.group_ids[i] < 0
        else:
            assert batch.action_mask[i].sum() > 0
    # The run goes on: the next step's episodes are all whole and trained.
    assert second["env/errors"] == 0 and second["env/timeouts"] == 0
    assert not any(s.info["env_error"] for s in later)
    assert second["trainer/weight_version"] == 2.0
