"""SkyRL-gym environments, unchanged, behind our TextEnv interface (``env.id=skyrl_gym:<id>``).

SkyRL-gym (``pip install 'rlhf[skyrl]'``, package ``skyrl-gym``) has its own registry and its own
text-environment class, ``BaseTextEnv``: an environment is built per episode with
``skyrl_gym.make(id, env_config=..., extras=row)`` where ``row`` is the dataset row's extra
columns (``reward_spec.ground_truth``, ``extra_info``, ...), then ``init(prompt messages) ->
(messages, metadata)`` and ``step(action) -> {observations, reward, done, metadata,
postprocessed_action}``. The mapping to ours (rlhf/envs/base.py):

- ``reset(task, seed)`` makes the SkyRL env with ``extras`` = the row's fields, with
  ``reward_spec = {"method": "rule", "ground_truth": task["answer"]}`` and ``extra_info = {}``
  unless the row has its own, updated by this adapter's kwargs (``env.kwargs``; e.g.
  ``max_turns``, which SkyRL's multi-turn envs read from ``extras``), then calls ``init`` with
  the prompt as one user message (or the row's ``messages``). ``seed``: SkyRL environments take
  no seed (the ones shipped are deterministic given the row), so it is unused.
- ``step`` returns ``(observations, reward, done, False, info)``: SkyRL's ``done`` is our
  ``terminated`` (SkyRL does not tell a turn limit of its own from an ending; our own
  ``env.max_turns`` still truncates). ``info`` carries ``metadata`` under ``skyrl_metadata``,
  the env's ``get_metrics()`` on the last step under ``skyrl_metrics``, and ``success`` (the
  final turn's reward >= ``success_reward``, default 1.0, SkyRL's full score).
- ``postprocessed_action``: SkyRL's own generator may replace the model's text by it in the
  history; we never re-tokenize sampled tokens (token-in/token-out), so it is recorded in
  ``info["postprocessed_action"]`` and the sampled tokens stay as sampled.

Environments that run offline (no LLM judge, no network, no docker): ``gsm8k``,
``gsm8k_multi_turn``, ``aime``. ``search`` needs a retrieval server, ``text2sql`` its databases,
``lcb``/``searchcode`` code execution; they build, and fail their steps, without those.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from rlhf.envs.base import EnvSpec, StepResult, TextEnv

PREFIX = "skyrl_gym"


def _skyrl():
    try:
        import skyrl_gym
    except ImportError as e:
        raise ImportError(
            f"env.id={PREFIX}:<id> needs the skyrl-gym package (pip install 'rlhf[skyrl]'): {e}"
        ) from e
    return skyrl_gym


def skyrl_ids() -> list[str]:
    """The ids registered in SkyRL-gym's registry (ImportError when it is not installed)."""
    return sorted(_skyrl().registry)


def check_id(skyrl_id: str) -> None:
    """KeyError naming SkyRL-gym's ids when ``skyrl_id`` is not one of them."""
    ids = skyrl_ids()
    if skyrl_id not in ids:
        raise KeyError(
            f"unknown SkyRL-gym env id {skyrl_id!r} in {PREFIX}:{skyrl_id}; "
            f"SkyRL-gym has: {', '.join(ids)}"
        )


class SkyRLEnv(TextEnv):
    """One SkyRL-gym ``BaseTextEnv`` per episode, built by ``skyrl_gym.make`` on ``reset``."""

    def __init__(
        self,
        skyrl_id: str,
        env_config: dict[str, Any] | None = None,
        success_reward: float = 1.0,
        **extras: Any,
    ):
        check_id(skyrl_id)
        self.skyrl_id, self.env_config = skyrl_id, env_config
        self.success_reward, self.extras = float(success_reward), extras
        self.env = None

    def _extras(self, task: dict[str, Any]) -> dict[str, Any]:
        fields = dict(task.get("fields") or {})
        fields.pop("messages", None)
        extras = copy.deepcopy(fields)
        extras.setdefault("reward_spec", {"method": "rule", "ground_truth": task.get("answer")})
        extras.setdefault("extra_info", {})
        extras.update(copy.deepcopy(self.extras))
        return extras

    def reset(self, task: dict[str, Any], seed: int) -> tuple[list[dict[str, Any]], dict]:
        del seed  # SkyRL-gym environments take no seed
        self.close()
        skyrl_gym = _skyrl()
        config = self.env_config
        if config is not None:
            from omegaconf import OmegaConf  # SkyRL's envs read their config as a DictConfig

            config = OmegaConf.create(dict(config))
        self.env = skyrl_gym.make(self.skyrl_id, env_config=config, extras=self._extras(task))
        prompt = (task.get("fields") or {}).get("messages") or [
            {"role": "user", "content": task["prompt"]}
        ]
        messages, metadata = self.env.init(list(prompt))
        return [dict(m) for m in messages], {"skyrl_metadata": dict(metadata or {})}

    def step(self, action: str) -> StepResult:
        if self.env is None:
            raise RuntimeError("step before reset")
        out = self.env.step(action)
        reward, done = float(out["reward"]), bool(out["done"])
        info: dict[str, Any] = {"skyrl_metadata": dict(out.get("metadata") or {})}
        if out.get("postprocessed_action") is not None:
            info["postprocessed_action"] = out["postprocessed_action"]
        if done:
            info["success"] = reward >= self.success_reward
            info["skyrl_metrics"] = dict(self.env.get_metrics() or {})
        messages = [dict(m) for m in (out.get("observations") or [])]
        return messages, reward, done, False, info

    def close(self) -> None:
        if self.env is not None:
            env, self.env = self.env, None
            env.close()


def spec_for(skyrl_id: str) -> EnvSpec:
    """Our registry's spec of ``skyrl_gym:<skyrl_id>`` (rlhf/envs/base.py's prefix hook): a
    KeyError for an id SkyRL-gym does not have, an ImportError when it is not installed."""
    check_id(skyrl_id)
    return EnvSpec(f"{PREFIX}:{skyrl_id}", functools.partial(SkyRLEnv, skyrl_id))
