"""Gymnasium env runners: the rollout role of the gym loop.

`GymRunner` (one Ray actor per rollout worker) steps a vector env of `envs_per_worker` envs with
its copy of the policy (`rlhf.models.mlp.ActorCritic`) and returns one trajectory `Sample` per
env per call (`steps_per_env` steps; the envs keep running across calls). New weights arrive
through the same weight-sync group the vLLM engines use (`WeightSyncGroup.receive`).

`GymRollout` is the role object the Trainer holds, with the same methods as `VllmRollout`.

Episode ends (gymnasium 1.x, autoreset mode SAME_STEP: the step that ends an episode returns the
first observation of the next one and puts the last one in `info["final_obs"]`):
- terminated: `done`, no bootstrap (the value after a terminal state is 0);
- truncated (time limit): `done`, and gamma * V(final_obs) is added to that step's reward, so
  GAE sees the value the episode would have had if it had gone on.
Returns and lengths of finished episodes (raw env rewards, no bootstrap) go to `sample.info`.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Any

import numpy as np
import torch

from rlhf.batch import Sample
from rlhf.config import GymConfig, MlpConfig, RolloutConfig
from rlhf.faults import NotSynced, restarted_actor
from rlhf.models.mlp import EnvSpec
from rlhf.rollout.workers import RolloutWorkers

RETURN_WINDOW = 20  # env/episode_return_mean is the mean over this many last episodes


def check_gym_config(gym_cfg: GymConfig) -> None:
    """Before Ray (rlhf.preflight): env_id is registered, the env builds with env_kwargs, and
    the MLP policy supports its spaces. Raises ConfigError naming rollout.gym.env_id."""
    import gymnasium as gym

    from rlhf.config import ConfigError

    if gym_cfg.env_id not in gym.registry:
        prefix = gym_cfg.env_id.split("-")[0].lower()
        close = [k for k in gym.registry if prefix in k.lower()][:5]
        raise ConfigError(
            "rollout.gym.env_id",
            f"{gym_cfg.env_id!r} is not a registered gymnasium env"
            + (f"; similar: {close}" if close else ""),
        )
    try:
        env_spec_of(gym_cfg)
    except Exception as e:  # a constructor error from the env is a config error too
        raise ConfigError(
            "rollout.gym.env_id",
            f"cannot use {gym_cfg.env_id!r} with env_kwargs {dict(gym_cfg.env_kwargs)}: {e}",
        ) from e


def env_spec_of(gym_cfg: GymConfig) -> EnvSpec:
    """Build one env to read its spaces. Raises ValueError for spaces the MLP cannot handle."""
    import gymnasium as gym
    from gymnasium import spaces

    env = gym.make(gym_cfg.env_id, **dict(gym_cfg.env_kwargs))
    try:
        obs, act = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs, spaces.Box):
        raise ValueError(f"{gym_cfg.env_id}: observation space {obs} is not a Box")
    if isinstance(act, spaces.Discrete):
        if act.start != 0:
            raise ValueError(f"{gym_cfg.env_id}: Discrete action space must start at 0, got {act}")
        return EnvSpec(gym_cfg.env_id, tuple(obs.shape), n_actions=int(act.n))
    if isinstance(act, spaces.Box):
        return EnvSpec(
            gym_cfg.env_id,
            tuple(obs.shape),
            act_dim=int(np.prod(act.shape)),
            low=tuple(float(x) for x in act.low.reshape(-1)),
            high=tuple(float(x) for x in act.high.reshape(-1)),
        )
    raise ValueError(f"{gym_cfg.env_id}: action space {act} is neither Discrete nor Box")


def make_vector_env(cfg: GymConfig, seed: int, index: int):
    """A vector env of `cfg.envs_per_worker` envs with SAME_STEP autoreset, reset with the seeds
    seed * 1000 + index * envs_per_worker + e. Returns (env, first observations)."""
    import gymnasium as gym
    from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

    kwargs = dict(cfg.env_kwargs)
    fns = [lambda: gym.make(cfg.env_id, **kwargs) for _ in range(cfg.envs_per_worker)]
    cls = AsyncVectorEnv if cfg.async_envs else SyncVectorEnv
    env = cls(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    first = seed * 1000 + index * cfg.envs_per_worker
    obs, _ = env.reset(seed=[first + e for e in range(cfg.envs_per_worker)])
    return env, obs


class GymRunner:
    """Wrapped with ray.remote by `rlhf.placement.spawn`; a plain class, so tests can drive it
    in-process."""

    def __init__(
        self,
        cfg: GymConfig,
        mlp_cfg: MlpConfig,
        env_spec: EnvSpec,
        seed: int,
        index: int,
        gamma: float,
    ):
        from rlhf.models.mlp import ActorCritic

        torch.set_num_threads(1)  # tiny matmuls: threads only add contention on shared cores
        self.cfg, self.spec, self.index, self.gamma = cfg, env_spec, index, gamma
        # Seeded like the learner's policy; the Trainer's initial weight sync overwrites it anyway.
        torch.manual_seed(seed)
        self.policy = ActorCritic(env_spec, mlp_cfg).eval()
        # Action sampling: reproducible per runner, and different between runners.
        self.generator = torch.Generator().manual_seed(seed * 1000 + index)
        self.env, self.obs = make_vector_env(cfg, seed, index)
        n = cfg.envs_per_worker
        self.ep_return = np.zeros(n)
        self.ep_len = np.zeros(n, dtype=np.int64)
        self.version = 0
        self.sync = None
        # Restarted by Ray after a crash: refuse to collect until re-synced (rlhf/faults.py).
        self.synced = not restarted_actor()
        if not env_spec.discrete:
            self.low = np.asarray(env_spec.low, dtype=np.float32)
            self.high = np.asarray(env_spec.high, dtype=np.float32)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    # ------------------------------------------------------------------ rollouts
    def collect(self) -> list[Sample]:
        """`steps_per_env` steps of every env -> one Sample per env (group_id: the global env
        index). Finished episodes' returns and lengths are in sample.info."""
        if not self.synced:
            raise NotSynced(self.index)
        start = time.perf_counter()
        T, N = self.cfg.steps_per_env, self.cfg.envs_per_worker
        spec = self.spec
        obs_buf = np.empty((T, N, *spec.obs_shape), dtype=np.float32)
        act_buf = (
            np.empty((T, N), dtype=np.int64)
            if spec.discrete
            else np.empty((T, N, spec.act_dim), dtype=np.float32)
        )
        rew_buf = np.empty((T, N), dtype=np.float32)  # env rewards + truncation bootstrap
        raw_return = np.zeros(N)  # env rewards only
        done_buf = np.empty((T, N), dtype=np.float32)
        val_buf = np.empty((T, N), dtype=np.float32)
        logp_buf = np.empty((T, N), dtype=np.float32)
        episodes: list[list[tuple[float, int]]] = [[] for _ in range(N)]
        for t in range(T):
            obs_buf[t] = self.obs
            actions, logp, values = self.policy.act(torch.from_numpy(obs_buf[t]), self.generator)
            act_buf[t] = actions.numpy()
            logp_buf[t] = logp.numpy()
            val_buf[t] = values.numpy()
            step = self.env.step(self._env_actions(act_buf[t]))
            self.obs, reward, terminated, truncated, info = step
            self.ep_return += reward
            self.ep_len += 1
            raw_return += reward
            rew_buf[t] = reward
            ended = terminated | truncated
            done_buf[t] = ended
            if ended.any():
                cut = truncated & ~terminated
                if cut.any():  # time limit: bootstrap from the value of the state it stopped in
                    final = np.stack([info["final_obs"][e] for e in np.flatnonzero(cut)])
                    v = self.policy.value(torch.as_tensor(final, dtype=torch.float32)).numpy()
                    rew_buf[t, cut] += self.gamma * v
                for e in np.flatnonzero(ended):
                    episodes[e].append((float(self.ep_return[e]), int(self.ep_len[e])))
                    self.ep_return[e], self.ep_len[e] = 0.0, 0
        last = self.policy.value(torch.as_tensor(self.obs, dtype=torch.float32)).numpy()
        elapsed = time.perf_counter() - start
        samples = []
        for e in range(N):
            samples.append(
                Sample(
                    group_id=self.index * N + e,
                    rollout_logprobs=logp_buf[:, e].tolist(),
                    weight_version=self.version,
                    reward=float(raw_return[e]),
                    obs=obs_buf[:, e].copy(),
                    actions=act_buf[:, e].copy(),
                    step_rewards=rew_buf[:, e].copy(),
                    dones=done_buf[:, e].copy(),
                    values=val_buf[:, e].copy(),
                    last_value=float(last[e]),
                    info={
                        "episode_returns": [r for r, _ in episodes[e]],
                        "episode_lengths": [n for _, n in episodes[e]],
                        "collect_s": elapsed,
                    },
                )
            )
        return samples

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        if self.spec.discrete:
            return actions
        return np.clip(actions, self.low, self.high)

    # ------------------------------------------------------------------ weights
    def init_weight_sync(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        meta: list[tuple[str, tuple[int, ...], str]],
        bucket_bytes: int,
    ) -> None:
        """Join the learner's weight-sync group as rank `rank_offset` (same signature as
        VllmEngine.init_weight_sync)."""
        from rlhf.rollout.weight_sync import ParamMeta, WeightSyncGroup

        meta = [ParamMeta(n, tuple(s), d) for n, s, d in meta]
        own = dict(self.policy.rollout_state())
        missing = [m.name for m in meta if m.name not in own]
        if missing:
            raise ValueError(f"the learner sends parameters this runner's policy lacks: {missing}")
        self.sync = WeightSyncGroup(
            host, port, rank_offset, world_size, torch.device("cpu"), meta, bucket_bytes
        )

    @torch.no_grad()
    def receive_weights(self, version: int) -> int:
        if self.sync is None:
            raise NotSynced(self.index)
        own = dict(self.policy.rollout_state())
        for name, tensor in self.sync.receive():
            own[name].copy_(tensor)
        self.version, self.synced = version, True
        return version

    def weight_version(self) -> int:
        return self.version

    def close(self) -> None:
        self.env.close()


class GymRollout(RolloutWorkers):
    """The rollout role for gymnasium: `workers`, one GymRunner actor per rollout worker.
    Methods that touch the actors return ObjectRefs; the driver calls ray.get."""

    exports_hf = False  # checkpoints can carry a Hugging Face export of the policy

    def __init__(
        self,
        cfg: RolloutConfig,
        mlp_cfg: MlpConfig,
        env_spec: EnvSpec,
        seed: int,
        slots,
        runtime_env: dict | None = None,
        *,
        gamma: float,
        max_restarts: int = 0,
    ):
        from rlhf.placement import spawn

        self.cfg = cfg
        super().__init__(
            spawn(
                GymRunner,
                slots,
                lambda i: ((cfg.gym, mlp_cfg, env_spec, seed, i, gamma), {}),
                runtime_env,
                max_restarts=max_restarts,
            )
        )
        self.env_steps = 0
        self.episodes = 0
        self.recent_returns: collections.deque[float] = collections.deque(maxlen=RETURN_WINDOW)
        self.recent_lengths: collections.deque[int] = collections.deque(maxlen=RETURN_WINDOW)
        self._last_metrics_at: float | None = None

    def collect(self) -> list[Any]:
        if self._last_metrics_at is None:
            self._last_metrics_at = time.perf_counter()
        return [r.collect.remote() for r in self.workers]

    def metrics(self, samples: list[Sample]) -> dict[str, float]:
        """env/episode_return_mean: mean return of the last RETURN_WINDOW finished episodes
        (across runners; NaN until one has finished). perf/env_steps_per_s: env steps per second
        of the whole loop since the previous call (rollout + learning + sync)."""
        steps = sum(len(s.dones) for s in samples)
        self.env_steps += steps
        for s in samples:
            self.recent_returns.extend(s.info["episode_returns"])
            self.recent_lengths.extend(s.info["episode_lengths"])
            self.episodes += len(s.info["episode_returns"])
        now = time.perf_counter()
        since = now - self._last_metrics_at if self._last_metrics_at is not None else math.nan
        self._last_metrics_at = now
        collect_s = max(s.info["collect_s"] for s in samples)
        nan = math.nan
        return {
            "env/episode_return_mean": (
                sum(self.recent_returns) / len(self.recent_returns) if self.recent_returns else nan
            ),
            "env/episode_len_mean": (
                sum(self.recent_lengths) / len(self.recent_lengths) if self.recent_lengths else nan
            ),
            "env/episodes": float(self.episodes),
            "env/steps": float(self.env_steps),
            "perf/env_steps_per_s": steps / since if since > 0 else nan,
            "rollout/env_steps_per_s": steps / collect_s if collect_s > 0 else nan,
            "rollout/weight_version_min": float(min(s.weight_version for s in samples)),
        }

    def state(self) -> dict[str, Any]:
        return {
            "env_steps": self.env_steps,
            "episodes": self.episodes,
            "recent_returns": list(self.recent_returns),
            "recent_lengths": list(self.recent_lengths),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.env_steps, self.episodes = state["env_steps"], state["episodes"]
        self.recent_returns.extend(state["recent_returns"])
        self.recent_lengths.extend(state["recent_lengths"])

    def sample_rows(self, samples: list[Sample], k: int = 8) -> list[dict[str, Any]]:
        """Episodes that finished in this step (up to k), for the W&B table / samples.jsonl."""
        rows = [
            {"env": s.group_id, "episode_return": r, "episode_len": n}
            for s in samples
            for r, n in zip(s.info["episode_returns"], s.info["episode_lengths"])
        ]
        return rows[:k]
