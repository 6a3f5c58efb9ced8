"""rollout.*: the rollout workers (vLLM engines for LLMs, env runners for gymnasium)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf.config.checks import ConfigError, in_range, one_of, positive


@dataclass
class VllmConfig:
    """vLLM engine arguments (the CPU build here, the CUDA build on GPUs)."""

    gpu_memory_utilization: float = 0.1  # on CPU: share of *host* memory for the KV cache
    enforce_eager: bool = True  # skip torch.compile / CUDA graphs: faster start-up
    max_model_len: int = 128
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = False

    def check(self) -> None:
        in_range("rollout.vllm.gpu_memory_utilization", self.gpu_memory_utilization, 0.01, 0.99)
        positive("rollout.vllm.max_model_len", self.max_model_len)
        positive("rollout.vllm.tensor_parallel_size", self.tensor_parallel_size)


@dataclass
class GymConfig:
    """Gymnasium env runners."""

    env_id: str = "CartPole-v1"
    envs_per_worker: int = 8  # vectorised envs stepped by each runner
    steps_per_env: int = 32  # env steps per env per trainer step (the rollout segment)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    async_envs: bool = False  # gymnasium AsyncVectorEnv (processes) instead of SyncVectorEnv

    def check(self) -> None:
        # Whether env_id exists and its spaces suit the MLP policy needs gymnasium to build the
        # env: rlhf.rollout.gym_runner.check_gym_config, run by rlhf.train.preflight.
        positive("rollout.gym.envs_per_worker", self.envs_per_worker)
        positive("rollout.gym.steps_per_env", self.steps_per_env)


@dataclass
class RolloutConfig:
    """Rollout workers: vLLM engines for LLMs, env runners for gymnasium."""

    backend: str = "vllm"  # vllm | gym
    num_workers: int = 1  # vLLM engines or env runners
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    prompts_per_step: int = 16  # LLM: prompts drawn per trainer step
    samples_per_prompt: int = 8  # LLM: responses per prompt (the GRPO group size)
    temperature: float = 1.0
    # Nucleus / top-k truncation would make the engines sample (and report logprobs) from a
    # renormalised distribution the learner does not score, so the importance ratios and
    # rollout/logprob_diff would include the dropped mass: only 1.0 / -1 (off) are accepted.
    top_p: float = 1.0
    top_k: int = -1  # -1 disables
    max_new_tokens: int = 8
    # The rollout pipeline (rlhf/pipeline.py). max_staleness k: engines generate up to k steps
    # ahead of the learner, and no trained sample is more than k weight versions old
    # (0 = on-policy lock-step). LLM rollouts only.
    max_staleness: int = 0
    # Prompts per engine generate call (0 = an engine's whole share of a step).
    prompts_per_call: int = 0
    filter_groups: bool = False  # DAPO dynamic sampling: drop all-equal groups, draw more prompts
    max_filter_rounds: int = 3  # extra draws per step before all-equal groups fill the batch
    vllm: VllmConfig = field(default_factory=VllmConfig)
    gym: GymConfig = field(default_factory=GymConfig)

    def check(self) -> None:
        one_of("rollout.backend", self.backend, ["vllm", "gym"])
        positive("rollout.num_workers", self.num_workers)
        positive("rollout.cpus_per_worker", self.cpus_per_worker, allow_zero=True)
        positive("rollout.gpus_per_worker", self.gpus_per_worker, allow_zero=True)
        positive("rollout.temperature", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError("rollout.top_p", f"must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise ConfigError("rollout.top_k", f"must be -1 (disabled) or >= 1, got {self.top_k}")
        for key, truncates in (
            ("rollout.top_p", self.top_p < 1.0),
            ("rollout.top_k", self.top_k > 0),
        ):
            if truncates:
                raise ConfigError(
                    key,
                    "truncated sampling is not supported: the engines would sample from the "
                    "renormalised kept tokens while the learner scores the full distribution, "
                    "so the importance ratios (and rollout/logprob_diff) would carry the "
                    "dropped probability mass; use rollout.top_p=1.0 and rollout.top_k=-1, "
                    "and rollout.temperature to sharpen sampling",
                )
        positive("rollout.max_new_tokens", self.max_new_tokens)
        positive("rollout.max_staleness", self.max_staleness, allow_zero=True)
        positive("rollout.prompts_per_call", self.prompts_per_call, allow_zero=True)
        positive("rollout.max_filter_rounds", self.max_filter_rounds, allow_zero=True)
        positive("rollout.prompts_per_step", self.prompts_per_step)
        positive("rollout.samples_per_prompt", self.samples_per_prompt)
        self.vllm.check()
        self.gym.check()
