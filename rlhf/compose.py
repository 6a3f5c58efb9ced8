"""The project's Hydra config composed outside `python -m rlhf.train`: for scripts, tests and
notebooks, with the same conf/ folder, schema and overrides as the command line.

    cfg, resolved = compose("+experiment=grpo", "algo.lr=3e-4")

Imports no Ray, vLLM or DeepSpeed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.config import RootConfig, register_configs, to_schema, validate

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def compose(*overrides: str, check: bool = True) -> tuple[RootConfig, dict[str, Any]]:
    """(typed RootConfig, resolved dict) of conf/config.yaml with Hydra `overrides`, as
    `python -m rlhf.train OVERRIDES` composes them; the dict is what a run logs as its config.
    `check=False` skips validate() (for tests of the validation itself)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        dcfg = hydra_compose(config_name="config", overrides=list(overrides))
    cfg = to_schema(dcfg)
    return (validate(cfg) if check else cfg), OmegaConf.to_container(dcfg, resolve=True)
