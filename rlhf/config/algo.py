"""algo.*: the algorithm. Its names index the registries in rlhf/algos.py."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import II

from rlhf.config.checks import ConfigError, in_range, one_of, positive

# Advantage estimators that compare the samples of one prompt (need groups of >= 2).
GROUP_ESTIMATORS = ("grpo", "grpo_no_std", "dr_grpo", "rloo", "reinforce_pp_baseline")


@dataclass
class AlgoConfig:
    """The algorithm: names index the registries in rlhf/algos.py."""

    name: str = "grpo"  # a label for logs and W&B tags
    advantage: str = "grpo"  # gae | grpo | grpo_no_std | dr_grpo | rloo | reinforce_pp | ...
    # ppo_clip | gspo | cispo | gmpo | clip_cov | kl_cov, or 'package.module:function' with
    # the POLICY_LOSSES signature (resolved like reward.fn; e.g. a test's fault-injecting loss)
    policy_loss: str = "ppo_clip"
    # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    loss_agg: str = "token-mean"
    clip_low: float = 0.2  # PPO ratio lower bound is 1 - clip_low (cispo: 1 = no lower bound)
    clip_high: float = 0.2  # PPO ratio upper bound is 1 + clip_high (DAPO clip-higher: 0.28)
    dual_clip: float | None = None  # dual-clip constant c > 1; null disables
    cov_ratio: float = 2e-4  # clip_cov / kl_cov: share of tokens selected by covariance
    clip_cov_lb: float = 1.0  # clip_cov: covariance band (lb, ub) of the candidate tokens
    clip_cov_ub: float = 5.0
    kl_cov_coef: float = 1.0  # kl_cov: |log-ratio| penalty weight on the selected tokens
    kl_coef: float = 0.0  # 0 skips the reference model entirely (initial value when adaptive)
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = False  # True: KL is a per-token reward penalty; False: a loss term
    # Adaptive KL (Ziegler et al. 2019): steer kl_coef so the measured KL nears this target;
    # null keeps kl_coef fixed. Needs kl_in_reward (the coefficient lives in the driver).
    kl_target: float | None = None
    kl_horizon: int = 10000  # adaptive KL: samples over which the coefficient adapts
    entropy_coef: float = 0.0  # entropy bonus (subtracted from the loss)
    value_coef: float = 0.5  # critic loss weight (GAE only)
    value_clip: float | None = None  # clip the critic's change per update; null disables
    critic_lr: float | None = None  # LLM critic's learning rate (its own param group); null = lr
    # Off-policy correction between the learner's old logprobs and the engine's rollout
    # logprobs (rlhf.algos.ROLLOUT_CORRECTIONS): none | tis (truncate at cap) | mask (zero the
    # tokens/sequences whose ratio is above cap or below 1/cap) | auto: tis when
    # rollout.max_staleness > 0, else none. The default measured best on stale runs:
    # scripts/bench_pipeline.py on 'spell', last-fifth reward at staleness 1 / 2 was 0.43 / 0.17
    # with none, 0.63 / 0.54 with tis, 0.61 / 0.51 with mask (0.64 on-policy).
    rollout_is: str = "auto"
    rollout_is_level: str = "token"  # token | sequence (one ratio per response)
    rollout_is_cap: float = 2.0  # > 1
    # DAPO overlong shaping: a linear penalty, reaching -overlong_penalty at
    # rollout.max_new_tokens, for responses longer than max_new_tokens - overlong_buffer
    overlong_buffer: int = 0  # tokens; 0 disables
    overlong_penalty: float = 1.0
    overlong_max_len: int = II("rollout.max_new_tokens")  # the length the penalty ramps to
    mask_truncated: bool = False  # drop responses cut at max_new_tokens from the loss (DAPO)
    gamma: float = 1.0  # discount
    lam: float = 1.0  # GAE lambda
    normalize_advantages: bool = False  # whiten advantages over the batch (common for PPO)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | linear (decays to 0 over trainer.total_steps)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    epochs: int = 1  # passes over each rollout batch
    minibatches: int = 1  # optimizer steps per epoch

    def check(self) -> None:
        from rlhf import algos  # torch only: the registries' names
        from rlhf.resolve import resolve_function

        one_of("algo.advantage", self.advantage, algos.ADVANTAGE_ESTIMATORS.names())
        if ":" in self.policy_loss:
            resolve_function(self.policy_loss, key="algo.policy_loss")
        else:
            one_of("algo.policy_loss", self.policy_loss, algos.POLICY_LOSSES.names())
        one_of("algo.loss_agg", self.loss_agg, algos.LOSS_AGGREGATIONS.names())
        one_of("algo.rollout_is", self.rollout_is, [*algos.ROLLOUT_CORRECTIONS.names(), "auto"])
        one_of("algo.rollout_is_level", self.rollout_is_level, ["token", "sequence"])
        one_of("algo.kl_estimator", self.kl_estimator, algos.KL_ESTIMATORS.names())
        one_of("algo.lr_schedule", self.lr_schedule, ["constant", "linear"])
        positive("algo.lr", self.lr)
        in_range("algo.clip_low", self.clip_low, 0.0, 1.0)
        positive("algo.clip_high", self.clip_high, allow_zero=True)
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ConfigError(
                "algo.dual_clip", f"must be > 1 (or null to disable), got {self.dual_clip}"
            )
        positive("algo.kl_coef", self.kl_coef, allow_zero=True)
        if self.kl_target is not None:
            positive("algo.kl_target", self.kl_target)
            positive("algo.kl_horizon", self.kl_horizon)
            if not self.kl_in_reward or self.kl_coef <= 0:
                raise ConfigError(
                    "algo.kl_target",
                    "adaptive KL steers the reward penalty: needs algo.kl_in_reward=true and "
                    "algo.kl_coef > 0",
                )
        if self.rollout_is_cap <= 1.0:
            raise ConfigError("algo.rollout_is_cap", f"must be > 1, got {self.rollout_is_cap}")
        positive("algo.cov_ratio", self.cov_ratio)
        if self.clip_cov_lb >= self.clip_cov_ub:
            raise ConfigError(
                "algo.clip_cov_lb",
                f"must be < algo.clip_cov_ub ({self.clip_cov_ub}), got {self.clip_cov_lb}",
            )
        positive("algo.kl_cov_coef", self.kl_cov_coef, allow_zero=True)
        if self.critic_lr is not None:
            positive("algo.critic_lr", self.critic_lr)
        positive("algo.overlong_buffer", self.overlong_buffer, allow_zero=True)
        positive("algo.overlong_penalty", self.overlong_penalty, allow_zero=True)
        positive("algo.entropy_coef", self.entropy_coef, allow_zero=True)
        positive("algo.value_coef", self.value_coef, allow_zero=True)
        if self.value_clip is not None:
            positive("algo.value_clip", self.value_clip)
        in_range("algo.gamma", self.gamma, 0.0, 1.0)
        in_range("algo.lam", self.lam, 0.0, 1.0)
        positive("algo.grad_clip", self.grad_clip, allow_zero=True)
        positive("algo.weight_decay", self.weight_decay, allow_zero=True)
        positive("algo.epochs", self.epochs)
        positive("algo.minibatches", self.minibatches)
