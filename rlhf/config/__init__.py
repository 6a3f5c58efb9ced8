"""Typed configuration: the schema Hydra composes into, and `validate`, which runs before Ray.

One module per section, each dataclass documented at its fields and holding its own rules in
`check()`; `root.validate` runs them and then the few rules that span sections. Each actor
receives only its own section (`LearnerConfig`, `RolloutConfig`, ...), never the root.

    checks.py   ConfigError and the shared small checks (one_of, positive, ...)
    model.py    model.* (tiny model, MLP)      data.py     data.*, eval.*
    algo.py     algo.*                         rollout.py  rollout.* (vllm, gym)
    reward.py   reward.* (every scorer)        learner.py  learner.*
    env.py      env.* (agent environments and their episode limits)
    run.py      placement.*, logger.*, trainer.*, ray.*
    root.py     RootConfig, register_configs, to_schema, validate
"""

from rlhf.config.algo import GROUP_ESTIMATORS, AlgoConfig
from rlhf.config.checks import ConfigError
from rlhf.config.data import DataConfig, EvalConfig
from rlhf.config.env import EnvConfig
from rlhf.config.learner import LearnerConfig
from rlhf.config.model import LoraConfig, MlpConfig, ModelConfig, TinyModelConfig
from rlhf.config.reward import (
    REWARD_KINDS,
    JudgeConfig,
    RemoteRewardConfig,
    RewardComponent,
    RewardConfig,
    RewardModelConfig,
    SandboxConfig,
)
from rlhf.config.rollout import GymConfig, RolloutConfig, VllmConfig
from rlhf.config.root import RootConfig, register_configs, to_schema, validate
from rlhf.config.run import (
    LoggerConfig,
    PlacementConfig,
    RayConfig,
    TrainerConfig,
    WandbConfig,
)

__all__ = [
    "GROUP_ESTIMATORS",
    "REWARD_KINDS",
    "AlgoConfig",
    "ConfigError",
    "DataConfig",
    "EnvConfig",
    "EvalConfig",
    "GymConfig",
    "JudgeConfig",
    "LearnerConfig",
    "LoggerConfig",
    "LoraConfig",
    "MlpConfig",
    "ModelConfig",
    "PlacementConfig",
    "RayConfig",
    "RemoteRewardConfig",
    "RewardComponent",
    "RewardConfig",
    "RewardModelConfig",
    "RolloutConfig",
    "RootConfig",
    "SandboxConfig",
    "TinyModelConfig",
    "TrainerConfig",
    "VllmConfig",
    "WandbConfig",
    "register_configs",
    "to_schema",
    "validate",
]
