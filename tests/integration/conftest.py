"""Shared fixtures for integration tests: a real local Ray cluster per module, the real tiny
model, and real DeepSpeed learner groups on it."""

import os
import sys
from pathlib import Path

import pytest

from rlhf.config import RootConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """The default tiny model (cached across runs, like the CLI's)."""
    from rlhf.train import resolve_model_path

    return resolve_model_path(RootConfig())


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # DeepSpeed's CPU comm op, built into the venv by `make install` (as rlhf.train uses it).
    ops = os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING", "TORCH_EXTENSIONS_DIR": ops}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture
def learner_group(ray_local, tiny_model_path):
    """learner_group(cfg, rows_per_step, runtime_env=None) -> a LearnerGroup of
    cfg.learner.num_ranks one-CPU ranks (cfg.model.path, or the tiny model), in a placement
    group of its own that is removed, ranks and all, when the test ends, passed or failed (so a
    failure does not leave the next test waiting for CPUs)."""
    from rlhf.learner.group import LearnerGroup
    from rlhf.placement import Slot

    groups = []

    def make(cfg, rows_per_step: int, runtime_env: dict | None = None) -> LearnerGroup:
        n = cfg.learner.num_ranks
        groups.append(ray_local.util.placement_group([{"CPU": 1}] * n))
        ray_local.get(groups[-1].ready())
        return LearnerGroup(
            cfg.learner,
            cfg.algo,
            cfg.model,
            cfg.model.path or tiny_model_path,
            [Slot(groups[-1], i, 1, 0) for i in range(n)],
            rows_per_step=rows_per_step,
            temperature=1.0,
            total_steps=10,
            seed=0,
            runtime_env=runtime_env,
        )

    yield make
    for pg in groups:
        ray_local.util.remove_placement_group(pg)
