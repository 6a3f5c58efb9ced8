"""rlhf/learner/old_logprobs.py: the update supplies the old logprobs only where they are
provably its own forward pass's (one optimizer step per batch, nothing reads them before the
update); every other configuration keeps the separate pass."""

from dataclasses import replace

import pytest

from rlhf.config import AlgoConfig
from rlhf.learner.old_logprobs import old_logprobs_from_update

ON_POLICY = AlgoConfig(rollout_is="none", epochs=1, minibatches=1)


def test_one_step_per_batch_takes_them_from_the_update():
    assert old_logprobs_from_update(ON_POLICY, has_critic=False)
    # A KL loss keeps the reference's pass but not the policy's.
    assert old_logprobs_from_update(replace(ON_POLICY, kl_coef=0.1), has_critic=False)


@pytest.mark.parametrize(
    "change, critic",
    [
        (dict(epochs=2), False),  # the second epoch's weights are not the old ones
        (dict(minibatches=2), False),  # nor the second minibatch's
        (dict(rollout_is="tis"), False),  # the correction weights come before the loss
        (dict(rollout_is="mask"), False),
        (dict(rollout_is="auto"), False),  # unresolved: may be tis
        (dict(kl_coef=0.1, kl_in_reward=True), False),  # the KL penalty enters the advantages
        ({}, True),  # a critic's values come from the pass anyway (GAE, gym)
    ],
)
def test_every_other_case_keeps_the_pass(change, critic):
    assert not old_logprobs_from_update(replace(ON_POLICY, **change), has_critic=critic)


def test_kl_in_reward_without_a_reference_still_skips():
    assert old_logprobs_from_update(replace(ON_POLICY, kl_in_reward=True), has_critic=False)
