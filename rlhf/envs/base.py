"""The text-environment interface and its registry (gymnasium's conventions, for messages).

An environment is a ``TextEnv``: ``reset(task, seed)`` returns the first messages of an episode
and an info dict; ``step(action)`` takes the text of the model's turn and returns ``(new
messages, reward of this turn, terminated, truncated, info)``. Environments are registered by id
and built with ``make(id, **kwargs)``, like gymnasium's registry; an id of the form
``"package.module:name"`` imports ``package.module`` first, so a user's module registers its own
environments when a run names them.

``info`` may carry this step's counters (``tool_calls``, ``tool_errors``) and, on the final step,
``success``; the agent loop sums the counters over an episode. Nothing here imports torch,
transformers or vLLM.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]  # {"role": "system"|"user"|"assistant"|"tool", "content": str, ...}
StepResult = tuple[list[Message], float, bool, bool, dict[str, Any]]
Policy = Callable[[list[Message]], str]  # a scripted policy: the transcript so far -> action


class TextEnv:
    """Base class of text environments. Subclass it and override ``step`` (and ``reset`` when
    the first messages are more than the task's prompt as one user turn)."""

    #: Typed Python functions the model may call (rlhf/envs/tools.py turns them into schemas).
    tools: tuple[Callable[..., Any], ...] = ()

    def reset(self, task: dict[str, Any], seed: int) -> tuple[list[Message], dict[str, Any]]:
        """Start an episode of ``task`` (a prompt row: ``{"prompt", "answer", **fields}``).
        ``seed`` must decide every random choice the environment makes."""
        del seed
        return [{"role": "user", "content": task["prompt"]}], {}

    def step(self, action: str) -> StepResult:
        """Take the text of the model's turn; return (messages, reward, terminated, truncated,
        info)."""
        raise NotImplementedError(f"{type(self).__name__}.step")

    def close(self) -> None:
        """Release what the environment holds (processes, files); called once per episode."""


EnvFactory = Callable[..., TextEnv]


@dataclass(frozen=True)
class EnvSpec:
    id: str
    entry_point: str | EnvFactory  # "package.module:Class" (imported on make) or a callable
    kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, EnvSpec] = {}
# "prefix:name" ids served by another library's registry (rlhf/envs/skyrl.py): prefix -> a
# function name -> EnvSpec (KeyError for an unknown name, ImportError when not installed).
_PREFIXES: dict[str, Callable[[str], EnvSpec]] = {}


def register_prefix(prefix: str, resolve: Callable[[str], EnvSpec]) -> None:
    """Route ids ``"<prefix>:<name>"`` to ``resolve(name)`` instead of importing ``prefix``."""
    _PREFIXES[prefix] = resolve


def register(env_id: str, entry_point: str | EnvFactory, **default_kwargs: Any) -> None:
    """Register an environment under ``env_id``; ``make`` passes ``default_kwargs`` updated by
    its own. A string entry point ``"package.module:attr"`` is imported only when made."""
    if not env_id or ":" in env_id:
        raise ValueError(f"env id {env_id!r} must be non-empty and contain no ':'")
    if env_id in _REGISTRY:
        raise ValueError(f"env id {env_id!r} is already registered")
    if isinstance(entry_point, str) and ":" not in entry_point:
        raise ValueError(f"entry point {entry_point!r} must look like 'package.module:attr'")
    _REGISTRY[env_id] = EnvSpec(env_id, entry_point, dict(default_kwargs))


def registered() -> list[str]:
    """The registered env ids, sorted."""
    return sorted(_REGISTRY)


def spec(env_id: str) -> EnvSpec:
    """The spec of ``env_id`` (``"module:name"`` imports ``module`` first). KeyError naming the
    known ids when there is none."""
    name = env_id
    if ":" in env_id:
        module, name = env_id.split(":", 1)
        if module in _PREFIXES:
            return _PREFIXES[module](name)
        importlib.import_module(module)  # registers its environments
    if name not in _REGISTRY:
        raise KeyError(f"unknown env id {env_id!r}; registered: {', '.join(registered())}")
    return _REGISTRY[name]


def _load(entry_point: str | EnvFactory) -> EnvFactory:
    if not isinstance(entry_point, str):
        return entry_point
    module, attr = entry_point.split(":", 1)
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def make(env_id: str, **kwargs: Any) -> TextEnv:
    """A new environment of ``env_id`` built with the registered kwargs updated by ``kwargs``."""
    s = spec(env_id)
    env = _load(s.entry_point)(**{**s.kwargs, **kwargs})
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise TypeError(f"env {env_id!r} built {type(env).__name__}, which has no reset/step")
    return env


@dataclass
class Episode:
    """A finished scripted episode (``run_episode``): the whole transcript and its totals."""

    messages: list[Message]
    reward: float = 0.0
    turns: int = 0
    terminated: bool = False
    truncated: bool = False
    success: bool = False
    tool_calls: int = 0
    tool_errors: int = 0


def run_episode(
    env: TextEnv, policy: Policy, task: dict[str, Any], seed: int, max_turns: int = 8
) -> Episode:
    """Play one episode with a text policy (a scripted expert, a test's policy): reset, then
    ``policy(messages) -> action`` and ``step`` until the episode ends or ``max_turns`` turns
    were taken (truncated). The model's turns appear as assistant messages."""
    first, _ = env.reset(task, seed)
    ep = Episode(messages=list(first))
    while ep.turns < max_turns:
        action = policy(ep.messages)
        new, reward, terminated, truncated, info = env.step(action)
        ep.turns += 1
        ep.messages += [{"role": "assistant", "content": action}, *new]
        ep.reward += float(reward)
        ep.tool_calls += int(info.get("tool_calls", 0))
        ep.tool_errors += int(info.get("tool_errors", 0))
        ep.success = bool(info.get("success", ep.success))
        if terminated or truncated:
            ep.terminated, ep.truncated = bool(terminated), bool(truncated)
            return ep
    ep.truncated = True
    return ep
