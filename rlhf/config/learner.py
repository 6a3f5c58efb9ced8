"""learner.*: the DeepSpeed learner group."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.config.checks import one_of, positive


@dataclass
class LearnerConfig:
    """The DeepSpeed learner group (data parallel)."""

    num_ranks: int = 2
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    zero_stage: int = 2  # 0 | 1 | 2 | 3
    micro_batch_size: int = 32  # samples per rank per forward/backward
    # Token budget per forward/backward instead (0 = off: micro_batch_size rows each). Each
    # minibatch's rows are sorted by length and packed so that rows x longest row <= this,
    # each micro-batch cut to its longest row: long-tailed response lengths cost no padding.
    # The loss and gradient are those of the fixed split (minibatch-wide aggregation totals).
    # LLM rollouts only; must hold the longest possible row, data.max_prompt_tokens +
    # rollout.max_new_tokens.
    max_tokens_per_micro_batch: int = 0
    # Updates between post-update diagnostics (algo/update_kl, algo/update_gain,
    # algo/value_update_gain): one more forward pass over the batch. Every update it cost 15%
    # of the default task's step (0.204 -> 0.168 s/step at 10, docs/performance.md), for a
    # metric that moves slowly: the first and every 10th update keep the curve, and the console
    # repeats the last value with its step. 1 = every update; 0 = never.
    diagnostics_every: int = 10
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU (GPU runs)
    sync_bucket_mb: int = 64  # weight broadcast bucket size
    # Seconds any one weight-sync collective may wait: when an engine dies mid-broadcast, the
    # learner and the other engines give up after this (not gloo's 600 s) and the trainer
    # rebuilds the group. Must exceed the longest generate call an engine may still be busy
    # with when a sync starts (rollout.max_staleness > 0 keeps engines generating).
    sync_timeout_s: float = 120.0

    def check(self) -> None:
        one_of("learner.zero_stage", self.zero_stage, [0, 1, 2, 3])
        positive("learner.num_ranks", self.num_ranks)
        positive("learner.micro_batch_size", self.micro_batch_size)
        positive(
            "learner.max_tokens_per_micro_batch", self.max_tokens_per_micro_batch, allow_zero=True
        )
        positive("learner.diagnostics_every", self.diagnostics_every, allow_zero=True)
        positive("learner.cpus_per_rank", self.cpus_per_rank, allow_zero=True)
        positive("learner.gpus_per_rank", self.gpus_per_rank, allow_zero=True)
        positive("learner.sync_bucket_mb", self.sync_bucket_mb)
        positive("learner.sync_timeout_s", self.sync_timeout_s)
