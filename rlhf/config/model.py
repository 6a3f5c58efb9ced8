"""model.*: which policy the learners train and the rollout workers serve."""

from __future__ import annotations

from dataclasses import dataclass, field

from rlhf.config.checks import DTYPES, ConfigError, hf_folder, one_of

TINY_HEAD_DIMS = (32, 64, 128)  # what the vLLM CPU attention kernels accept (not 16)


@dataclass
class TinyModelConfig:
    """The built-in tiny causal LM, built offline and cached (rlhf/models/tiny.py). Defaults
    are what scripts/learnability.py chose (530k parameters)."""

    hidden_size: int = 128  # = num_heads * head_dim (vLLM's Qwen2 ignores config.head_dim)
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 64  # the vLLM CPU attention kernels accept 32, 64, 128 (not 16)
    intermediate_size: int = 512
    warmup_steps: int = 300  # cap on supervised steps on the task format before RL (0 = none)
    warmup_lr: float = 1e-3
    # The warm-up stops once the chance of sampling the right answer reaches this, so every
    # seed starts RL from a similar reward; null always runs warmup_steps.
    warmup_target: float | None = 0.15

    def check(self) -> None:
        one_of("model.tiny.head_dim", self.head_dim, TINY_HEAD_DIMS)
        if self.hidden_size != self.num_heads * self.head_dim:
            raise ConfigError(
                "model.tiny.hidden_size",
                f"must equal num_heads * head_dim ({self.num_heads} * {self.head_dim})",
            )


@dataclass
class MlpConfig:
    """Policy and value MLPs for gymnasium environments."""

    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # tanh | relu
    init_log_std: float = 0.0  # Gaussian policies: initial log standard deviation

    def check(self) -> None:
        one_of("model.mlp.activation", self.activation, ["tanh", "relu"])


@dataclass
class ModelConfig:
    """Which policy the learners train and the rollout workers serve."""

    kind: str = "causal_lm"  # causal_lm (vLLM rollouts) | mlp (gymnasium rollouts)
    path: str = ""  # HF model folder; empty = the built-in tiny model
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False
    # PPO for LLMs (algo.advantage=gae): the critic's HF model folder (its backbone gets a value
    # head); empty = a copy of the policy's architecture and weights
    critic_path: str = ""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    mlp: MlpConfig = field(default_factory=MlpConfig)

    def check(self) -> None:
        one_of("model.kind", self.kind, ["causal_lm", "mlp"])
        one_of("model.dtype", self.dtype, DTYPES)
        self.tiny.check()
        self.mlp.check()
        if self.path:
            hf_folder("model.path", self.path)
        if self.critic_path:
            hf_folder("model.critic_path", self.critic_path)
