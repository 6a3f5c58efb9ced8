"""Shared fixtures for integration tests: a real local Ray cluster and the real tiny model."""

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
