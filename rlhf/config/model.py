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


# Every linear projection of a Qwen2/Llama-style block: what LoRA adapts by default.
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
VLLM_MAX_LORA_RANK = 512  # the largest max_lora_rank vLLM accepts


@dataclass
class LoraConfig:
    """model.lora: train a LoRA adapter (through PEFT) instead of all weights; the rollout
    engines keep the base and receive only the adapter (rlhf/models/lora.py,
    rlhf/rollout/lora_sync.py). rank 0 (or model.lora=null) = full fine-tuning."""

    rank: int = 0  # r of the low-rank update B @ A; 0 = off
    alpha: float = 16.0  # the update is scaled by alpha / rank
    dropout: float = 0.0  # dropout on the adapter's input (training only)
    # Module names (the last part of the name, as PEFT matches them) that get an adapter;
    # preflight checks each exists as a linear layer of the model.
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS))
    # Also train the output layer (lm_head) in full beside the adapter (PEFT's
    # modules_to_save=["lm_head"]): vLLM serves no adapter on it, so each sync sends the trained
    # lm_head weight into the engines' base model (vocab x hidden more bytes). Needs an untied
    # output layer (tie_word_embeddings=false); preflight checks the model.
    train_lm_head: bool = False

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def check(self) -> None:
        if not isinstance(self.rank, int) or self.rank < 0:
            raise ConfigError("model.lora.rank", f"must be an integer >= 0, got {self.rank!r}")
        if not self.enabled:
            return
        if self.rank > VLLM_MAX_LORA_RANK:
            raise ConfigError(
                "model.lora.rank", f"vLLM serves ranks up to {VLLM_MAX_LORA_RANK}, got {self.rank}"
            )
        if not self.alpha > 0:
            raise ConfigError("model.lora.alpha", f"must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.lora.dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules:
            raise ConfigError("model.lora.target_modules", "must name at least one module")
        bad = [m for m in self.target_modules if not m or not str(m).isidentifier()]
        if bad:
            raise ConfigError(
                "model.lora.target_modules", f"{bad} are not module names (e.g. q_proj)"
            )


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
    lora: LoraConfig | None = field(default_factory=LoraConfig)  # null = off, as rank 0

    @property
    def uses_lora(self) -> bool:
        return self.lora is not None and self.lora.enabled

    def check(self) -> None:
        one_of("model.kind", self.kind, ["causal_lm", "mlp"])
        one_of("model.dtype", self.dtype, DTYPES)
        self.tiny.check()
        self.mlp.check()
        if self.lora is not None:
            self.lora.check()
        if self.uses_lora and self.kind != "causal_lm":
            raise ConfigError("model.lora.rank", "LoRA is for model.kind=causal_lm")
        if self.path:
            hf_folder("model.path", self.path)
        if self.critic_path:
            hf_folder("model.critic_path", self.critic_path)
