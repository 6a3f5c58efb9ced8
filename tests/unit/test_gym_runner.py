"""GymRunner's trajectory bookkeeping and the MLP policy, in-process (no Ray, no DeepSpeed).

The runner is driven on a tiny deterministic env whose observation is the step count, with a
critic replaced by V(obs) = 10 * obs, so every bootstrap term can be computed by hand.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from rlhf.batch import collate
from rlhf.config import GymConfig, MlpConfig
from rlhf.models.mlp import ActorCritic
from rlhf.rollout.gym_runner import EnvSpec, GymRunner, env_spec_of

COUNTER = "rlhf-test/Counter-v0"
GAMMA = 0.9


class Counter(gym.Env):
    """obs = [steps taken in this episode]; reward 1 per step; terminates after `term_at` steps
    (never when None; the TimeLimit wrapper truncates it instead)."""

    observation_space = gym.spaces.Box(0.0, 1e6, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, term_at=None):
        self.term_at, self.t = term_at, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        terminated = self.term_at is not None and self.t >= self.term_at
        return np.array([float(self.t)], np.float32), 1.0, terminated, False, {}


if COUNTER not in gym.registry:
    gym.register(COUNTER, entry_point=Counter, max_episode_steps=5)


def counter_runner(steps: int, envs: int = 2, **env_kwargs) -> GymRunner:
    cfg = GymConfig(
        env_id=COUNTER, envs_per_worker=envs, steps_per_env=steps, env_kwargs=env_kwargs
    )
    runner = GymRunner(
        cfg, MlpConfig(hidden_sizes=[8]), env_spec_of(cfg), seed=0, index=1, gamma=GAMMA
    )
    runner.policy.value = lambda obs: obs[:, 0] * 10.0  # V(s) = 10 * steps taken
    return runner


def test_truncation_is_bootstrapped_from_the_final_observation():
    runner = counter_runner(steps=12)  # TimeLimit truncates at 5 steps: ends at t = 4 and 9
    samples = runner.collect()
    assert len(samples) == 2 and [s.group_id for s in samples] == [2, 3]  # index 1 * 2 envs
    for s in samples:
        ends = [4, 9]
        assert s.dones.tolist() == [1.0 if t in ends else 0.0 for t in range(12)]
        # V(final obs = [5]) = 50, not V(reset obs = [0]) = 0
        expected = [1.0 + GAMMA * 50.0 if t in ends else 1.0 for t in range(12)]
        assert_close(s.step_rewards, np.array(expected, np.float32))
        assert s.obs[:, 0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]  # the obs acted on
        assert s.last_value == pytest.approx(20.0)  # the segment ends 2 steps into episode 3
        assert s.info["episode_returns"] == [5.0, 5.0]  # raw env rewards, no bootstrap
        assert s.info["episode_lengths"] == [5, 5]
        assert s.reward == 12.0


def test_termination_is_not_bootstrapped():
    runner = counter_runner(steps=7, term_at=3)
    for s in runner.collect():
        assert s.dones.tolist() == [0, 0, 1, 0, 0, 1, 0]
        assert s.step_rewards.tolist() == [1.0] * 7
        assert s.obs[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0]
        assert s.info["episode_returns"] == [3.0, 3.0]


def test_episodes_spanning_segments_count_once_with_full_length():
    runner = counter_runner(steps=3)  # episodes of 5 steps, segments of 3
    first, second = runner.collect()[0], runner.collect()[0]
    assert first.info["episode_returns"] == [] and first.dones.tolist() == [0, 0, 0]
    assert second.info["episode_returns"] == [5.0] and second.info["episode_lengths"] == [5]
    assert second.dones.tolist() == [0, 1, 0]


def test_env_seeds_differ_per_env_and_runner():
    cfg = GymConfig(env_id="CartPole-v1", envs_per_worker=3, steps_per_env=2)
    spec = env_spec_of(cfg)
    a = GymRunner(cfg, MlpConfig(), spec, seed=7, index=0, gamma=GAMMA)
    b = GymRunner(cfg, MlpConfig(), spec, seed=7, index=1, gamma=GAMMA)
    again = GymRunner(cfg, MlpConfig(), spec, seed=7, index=0, gamma=GAMMA)
    assert len({tuple(o) for o in np.concatenate([a.obs, b.obs])}) == 6
    assert_close(a.obs, again.obs)
    assert_close(collate(a.collect()).obs, collate(again.collect()).obs)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_rollout_logprobs_and_values_match_the_learner_forward(env_id):
    """The runner's behaviour logprobs are those of the stored (unclipped) actions under the
    same module the learner trains; for Pendulum a wide Gaussian samples outside [-2, 2]."""
    mlp = MlpConfig(init_log_std=1.5)
    cfg = GymConfig(env_id=env_id, envs_per_worker=4, steps_per_env=16)
    runner = GymRunner(cfg, mlp, env_spec_of(cfg), seed=0, index=0, gamma=GAMMA)
    batch = collate(runner.collect())
    logprobs, entropy, values = runner.policy(batch)
    assert logprobs.shape == entropy.shape == values.shape == (4, 16)
    assert_close(logprobs, batch.rollout_logprobs)
    assert_close(values, batch.values)
    if env_id == "Pendulum-v1":
        assert batch.actions.shape == (4, 16, 1) and batch.actions.abs().max() > 2.0
    # Flattened to one env step per row (what the learner optimises over): same numbers.
    flat = batch.flatten_steps()
    assert_close(runner.policy(flat)[0].reshape(4, 16), batch.rollout_logprobs)


def test_actor_critic_matches_torch_distributions():
    torch.manual_seed(0)
    obs = torch.randn(3, 5, 4)
    disc = ActorCritic(EnvSpec("x", (4,), n_actions=3), MlpConfig())
    actions = torch.randint(0, 3, (3, 5))
    batch = type("B", (), {"obs": obs, "actions": actions})()
    lp, ent, _ = disc(batch)
    ref = torch.distributions.Categorical(logits=disc.actor(obs))
    assert_close(lp, ref.log_prob(actions))
    assert_close(ent, ref.entropy())

    cont = ActorCritic(
        EnvSpec("y", (4,), act_dim=2, low=(-1, -1), high=(1, 1)), MlpConfig(init_log_std=-0.5)
    )
    actions = torch.randn(3, 5, 2) * 3
    batch.actions = actions
    lp, ent, values = cont(batch)
    ref = torch.distributions.Normal(cont.actor(obs), cont.log_std.exp())
    assert_close(lp, ref.log_prob(actions).sum(-1))
    assert_close(ent, ref.entropy().sum(-1))
    assert values.shape == (3, 5)
    assert_close(cont.log_std.detach(), torch.full((2,), -0.5))


def test_orthogonal_init_and_small_policy_head():
    torch.manual_seed(0)
    policy = ActorCritic(EnvSpec("x", (4,), n_actions=2), MlpConfig(hidden_sizes=[64, 64]))
    head = policy.actor[-1].weight
    assert_close(head @ head.T, 0.01**2 * torch.eye(2), atol=1e-6, rtol=0)
    assert_close(policy.critic[-1].weight.norm(), torch.tensor(1.0))
    linears = [m for m in policy.modules() if isinstance(m, torch.nn.Linear)]
    assert all(float(m.bias.detach().abs().max()) == 0 for m in linears)


def test_unsupported_spaces_are_rejected():
    with pytest.raises(ValueError, match="Box"):
        env_spec_of(GymConfig(env_id="Blackjack-v1"))


def test_async_envs_give_the_same_trajectories_as_sync():
    """rollout.gym.async_envs=true steps the envs in subprocesses; same seeds, same data."""

    def run(async_envs):
        cfg = GymConfig(
            env_id="CartPole-v1", envs_per_worker=2, steps_per_env=40, async_envs=async_envs
        )
        runner = GymRunner(cfg, MlpConfig(), env_spec_of(cfg), seed=3, index=0, gamma=GAMMA)
        try:
            return collate(runner.collect()), runner.collect()
        finally:
            runner.close()

    (sync_batch, sync_next), (async_batch, async_next) = run(False), run(True)
    assert_close(sync_batch.obs, async_batch.obs)
    assert_close(sync_batch.token_rewards, async_batch.token_rewards)
    assert_close(sync_batch.dones, async_batch.dones)
    assert [s.info["episode_returns"] for s in sync_next] == [
        s.info["episode_returns"] for s in async_next
    ]
