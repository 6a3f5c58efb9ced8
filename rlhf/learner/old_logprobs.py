"""When the update's own forward pass can supply the old logprobs, saving a separate pass.

The old logprobs (log pi_old of the sampled tokens) are the learner's current weights' scores
of the batch, taken before the update. With one optimizer step per batch (`algo.epochs=1`,
`algo.minibatches=1`) the update's forward pass runs on exactly those weights, so its logprobs,
detached, are the old logprobs: the ratio is exp(0) = 1 with the same gradient, and a separate
no-grad pass over the batch is wasted work. Everything that reads the old logprobs must then
be able to wait until the update:

- the advantages must not: a critic's values come from the pass anyway (GAE, gym), and a KL
  penalty in the reward (`algo.kl_in_reward`) needs old and reference logprobs before the
  advantages;
- the rollout correction must be `none` (the weights of tis/mask multiply the loss, from old
  vs rollout logprobs). `algo.rollout_is=auto` resolves to none at `rollout.max_staleness=0`.

A reference model's pass stays when a KL loss needs it. The metrics that compare the old
logprobs with the engine's and the reference's (`rollout/logprob_diff`,
`algo/rollout_is_weight_mean`, `algo/kl_ref`) then come from the update (LearnerWorker._loss).
"""

from __future__ import annotations

from rlhf.config import AlgoConfig


def old_logprobs_from_update(algo: AlgoConfig, has_critic: bool) -> bool:
    """True when the update can take the old logprobs from its own forward pass, exactly."""
    return (
        algo.epochs == 1
        and algo.minibatches == 1
        and not has_critic
        and algo.rollout_is == "none"
        and not (algo.kl_in_reward and algo.kl_coef > 0)
    )
