"""Reward actors: score Samples in batches with the configured scorer, or a weighted sum of them.

`reward.kind` picks one scorer, once, at construction (`SCORERS`): fn and math calls run in
killable worker processes, a chunk of samples per call (pool.py), except a built-in task's
trusted exact-match reward, which the actor calls itself (inprocess.py); a reward model scores
batches in the actor (model.py), a remote endpoint is called over HTTP (remote.py), code runs in
a sandbox (sandbox.py), a vLLM judge answers a judge prompt (judge.py). With
`reward.components` the reward is `sum(weight * value)` over several scorers, each logged as
`reward/<name>`.

Every kind goes through the same accounting: a scorer that raised, hung past its timeout,
crashed its worker, or gave NaN / a non-number gives `fallback` for that sample (for that
component, when composed), is recorded in `sample.info["reward_error"]` ("exception: ...",
"timeout", "crash: ...", "nan", "bad type ..."), and never stops the run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from rlhf.batch import Sample
from rlhf.config import REWARD_KINDS, RewardComponent, RewardConfig
from rlhf.placement import Slot, shard, spawn


class Scorer(Protocol):
    def score(self, samples: list[Sample]) -> list[tuple[Any, str | None]]:
        """(value, None) or (None, error) per sample, in order."""


def _fn_scorer(cfg: RewardConfig, fn: str, task_name: str) -> Scorer:
    from rlhf.reward.inprocess import InProcessScorer, runs_in_process
    from rlhf.reward.pool import FunctionScorer

    # A trusted built-in rule reward needs no worker process (and its round trip per sample).
    if runs_in_process(fn, task_name):
        return InProcessScorer(task_name)
    return FunctionScorer(fn, task_name, cfg.timeout_s, cfg.workers, cfg.chunk_size)


def _math_scorer(cfg: RewardConfig, fn: str, task_name: str) -> Scorer:
    return _fn_scorer(cfg, "rlhf.reward.math:math_reward", task_name)


def _model_scorer(cfg: RewardConfig, fn: str, task_name: str) -> Scorer:
    from rlhf.reward.model import RewardModelScorer

    return RewardModelScorer(cfg.model, use_gpu=cfg.gpus_per_actor > 0)


def _remote_scorer(cfg: RewardConfig, fn: str, task_name: str) -> Scorer:
    from rlhf.reward.remote import RemoteScorer

    return RemoteScorer(cfg.remote)


def _sandbox_scorer(cfg: RewardConfig, fn: str, task_name: str) -> Scorer:
    from rlhf.reward.sandbox import SandboxScorer

    return SandboxScorer(cfg.sandbox)


def _judge_scorer(cfg: RewardConfig, fn: str, task_name: str) -> Scorer:
    from rlhf.reward.judge import JudgeScorer

    return JudgeScorer(cfg.judge, use_gpu=cfg.gpus_per_actor > 0)


# reward.kind -> factory(cfg, fn, task_name); the names match rlhf.config.REWARD_KINDS.
SCORERS: dict[str, Callable[[RewardConfig, str, str], Scorer]] = {
    "fn": _fn_scorer,
    "math": _math_scorer,
    "model": _model_scorer,
    "remote": _remote_scorer,
    "sandbox": _sandbox_scorer,
    "judge": _judge_scorer,
}
assert tuple(SCORERS) == REWARD_KINDS


@dataclass
class _Term:
    name: str
    weight: float
    scorer: Scorer


class RewardActor:
    def __init__(self, cfg: RewardConfig, task_name: str):
        self.cfg = cfg
        comps = cfg.components or [RewardComponent(name="", kind=cfg.kind, fn=cfg.fn, weight=1.0)]
        self.composed = bool(cfg.components)
        self.terms = [
            _Term(c.metric_name(), c.weight, SCORERS[c.kind](cfg, c.fn, task_name)) for c in comps
        ]

    def score(self, samples: list[Sample]) -> list[Sample]:
        if not samples:
            return samples
        per_term = [t.scorer.score(samples) for t in self.terms]
        for i, s in enumerate(samples):
            total, parts, error = 0.0, {}, None
            for term, outcomes in zip(self.terms, per_term):
                value, err = outcomes[i]
                if err is None and not _is_number(value):
                    err = "nan" if isinstance(value, float) else f"bad type {type(value).__name__}"
                v = float(value) if err is None else self.cfg.fallback
                if err is not None and error is None:
                    error = err
                    if self.composed:
                        s.info["reward_error_component"] = term.name
                parts[term.name] = v
                total += term.weight * v
            s.reward = total if self.composed else parts[self.terms[0].name]
            if self.composed:
                s.info["reward_components"] = parts
            if error is not None:
                s.info["reward_error"] = error
        return samples

    def state(self) -> dict[str, Any]:
        """The scorers' checkpointed state, by term (only scorers that have one: the reward
        model's normalisation moments)."""
        return {t.name: t.scorer.state() for t in self.terms if hasattr(t.scorer, "state")}

    def load_state(self, state: dict[str, Any]) -> None:
        for t in self.terms:
            if t.name in state and hasattr(t.scorer, "load_state"):
                t.scorer.load_state(state[t.name])

    def close(self) -> None:
        """Stop worker processes now (they also die with the actor)."""
        for t in self.terms:
            close = getattr(t.scorer, "close", None)
            if close is not None:
                close()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class RewardGroup:
    """The reward actors. `score` spreads samples over all of them; `submit` sends one chunk
    to the next actor round-robin (the pipeline calls it per finished generation chunk, so
    scoring overlaps generation). Both return ObjectRefs of `list[Sample]`."""

    def __init__(
        self,
        cfg: RewardConfig,
        task_name: str,
        slots: list[Slot],
        runtime_env: dict | None = None,
        max_restarts: int = 0,
    ):
        # Scoring is safe to repeat: after a crash Ray restarts the actor and re-runs the calls
        # that were in flight on it (max_task_retries=-1: as often as it restarts).
        self.actors = spawn(
            RewardActor,
            slots,
            lambda i: ((cfg, task_name), {}),
            runtime_env,
            max_restarts=max_restarts,
            max_task_retries=-1 if max_restarts else 0,
        )
        self._next = 0

    def score(self, samples: list[Sample]) -> list[Any]:
        return [
            a.score.remote(part)
            for a, part in zip(self.actors, shard(samples, len(self.actors)))
            if part
        ]

    def submit(self, samples: list[Sample]) -> Any:
        actor = self.actors[self._next % len(self.actors)]
        self._next += 1
        return actor.score.remote(samples)

    def state(self) -> list[Any]:
        """One ref per actor of RewardActor.state() (each actor keeps its own moments)."""
        return [a.state.remote() for a in self.actors]

    def load_state(self, states: list[dict[str, Any]]) -> list[Any]:
        """Actor i gets state i; with another actor count than when saved, every actor gets
        the first one (a resume with a different reward.num_actors cannot be exact anyway)."""
        same = len(states) == len(self.actors)
        return [
            a.load_state.remote(states[i] if same else states[0])
            for i, a in enumerate(self.actors)
            if states
        ]


def reward_metrics(samples: list[Sample]) -> dict[str, float]:
    """reward/mean, std, error counts, and the share of groups whose rewards are all equal
    (such groups carry no learning signal under group-relative advantages); for a composed
    reward also reward/<component> means; reward/retries counts remote retries."""
    rewards = [s.reward for s in samples]
    mean = sum(rewards) / len(rewards)
    groups: dict[int, set[float]] = {}
    for s in samples:
        groups.setdefault(s.group_id, set()).add(s.reward)
    errors = [s.info.get("reward_error", "") for s in samples]
    out = {
        "reward/mean": mean,
        "reward/std": (sum((r - mean) ** 2 for r in rewards) / len(rewards)) ** 0.5,
        "reward/all_equal_group_frac": sum(len(v) == 1 for v in groups.values()) / len(groups),
        "reward/errors": float(
            sum(e.startswith("exception") or e.startswith("bad") for e in errors)
        ),
        "reward/timeouts": float(sum(e == "timeout" for e in errors)),
        "reward/nans": float(sum(e == "nan" for e in errors)),
        "reward/crashes": float(sum(e.startswith("crash") for e in errors)),
    }
    retries = sum(s.info.get("reward_retries", 0) for s in samples)
    if retries or any("reward_retries" in s.info for s in samples):
        out["reward/retries"] = float(retries)
    parts: dict[str, list[float]] = {}
    for s in samples:
        for name, v in s.info.get("reward_components", {}).items():
            parts.setdefault(name, []).append(v)
    for name, vs in parts.items():
        out[f"reward/{name}"] = sum(vs) / len(vs)
    return out
