"""Shared fixtures for integration tests: a real local Ray cluster and the real tiny model."""

import os

import pytest

from rlhf.config import RootConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture(scope="session")
def tiny_model_path() -> str:
    """The default tiny model (cached across runs, like the CLI's)."""
    from rlhf.models.tiny import build_tiny_model

    t = RootConfig().model.tiny
    return str(build_tiny_model(task="addition", hidden_size=t.hidden_size, num_layers=t.num_layers,
                                num_heads=t.num_heads, head_dim=t.head_dim,
                                warmup_steps=t.warmup_steps, warmup_lr=t.warmup_lr, seed=0))


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             log_to_driver=False, runtime_env={"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING"}})
    yield ray
    ray.shutdown()
