"""The algo section's validation: each bad value is a ConfigError naming its key, before Ray."""

import pytest

from rlhf.config import ConfigError, RootConfig, validate


def _cfg(**algo):
    cfg = RootConfig()
    for k, v in algo.items():
        setattr(cfg.algo, k, v)
    return cfg


@pytest.mark.parametrize(
    "algo,key",
    [
        (dict(policy_loss="ppo_clpi"), "algo.policy_loss"),
        (dict(policy_loss="no_such_module_xyz:fn"), "algo.policy_loss"),
        (dict(policy_loss="rlhf.algos:no_such_fn"), "algo.policy_loss"),
        (dict(loss_agg="seq-sum"), "algo.loss_agg"),
        (dict(rollout_is="is"), "algo.rollout_is"),
        (dict(rollout_is_level="batch"), "algo.rollout_is_level"),
        (dict(rollout_is_cap=1.0), "algo.rollout_is_cap"),
        (dict(kl_target=0.1), "algo.kl_target"),  # needs kl_in_reward and kl_coef > 0
        (dict(kl_target=-1.0, kl_in_reward=True, kl_coef=0.1), "algo.kl_target"),
        (dict(cov_ratio=0.0), "algo.cov_ratio"),
        (dict(clip_cov_lb=5.0, clip_cov_ub=1.0), "algo.clip_cov_lb"),
        (dict(critic_lr=0.0), "algo.critic_lr"),
        (dict(overlong_buffer=-1), "algo.overlong_buffer"),
        (dict(overlong_buffer=100), "algo.overlong_buffer"),  # > rollout.max_new_tokens
    ],
)
def test_bad_algo_values_name_their_key(algo, key):
    with pytest.raises(ConfigError) as e:
        validate(_cfg(**algo))
    assert e.value.key == key


def test_good_algo_values_pass(tmp_path):
    validate(
        _cfg(
            policy_loss="rlhf.algos:cispo",
            rollout_is="mask",
            rollout_is_level="sequence",
            kl_target=0.05,
            kl_in_reward=True,
            kl_coef=0.1,
            overlong_buffer=4,
            mask_truncated=True,
            loss_agg="seq-mean-token-sum",
        )
    )
    cfg = RootConfig()
    cfg.model.critic_path = str(tmp_path)  # not a model folder
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == "model.critic_path"
