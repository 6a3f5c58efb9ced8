"""Placement groups and actor spawning.

Bundles are reserved per role (learner ranks, rollout workers, reward actors) before any actor
starts, so a run either gets all its resources or fails at once with Ray's message. Two modes:

- disaggregated: every role has its own bundles (one placement group per role, each with
  `placement.strategy`; PACK keeps a role on as few nodes as possible).
- colocated: rollout worker i shares learner rank i's bundle and they take turns (the loop is
  sequential); on GPUs each takes half of the bundle's GPU, on CPUs (without staleness) the
  learner rank computes with all of the bundle's CPUs in its turn.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlhf.config import RootConfig


def required_cpus(cfg: RootConfig) -> float:
    """Logical CPUs all bundles ask for (colocated rollout workers share learner bundles)."""
    learner = cfg.learner.num_ranks * cfg.learner.cpus_per_rank
    rollout = cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
    llm = cfg.rollout.backend == "vllm"
    reward = cfg.reward.num_actors * cfg.reward.cpus_per_actor if llm else 0
    if cfg.placement.mode == "colocated":
        rollout = 0
    return learner + rollout + reward


@dataclass
class Slot:
    """Where one actor goes: a bundle of a placement group and the share of it the actor takes."""

    pg: Any
    bundle_index: int
    num_cpus: float
    num_gpus: float
    # CPU threads the actor may use while it runs: Ray limits an actor to its num_cpus (via
    # OMP_NUM_THREADS), but colocated roles that take turns each have the whole bundle in their
    # turn. 0 = leave Ray's setting.
    threads: int = 0

    def options(self, runtime_env: dict | None = None) -> dict:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return dict(
            num_cpus=self.num_cpus,
            num_gpus=self.num_gpus,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.pg,
                placement_group_bundle_index=self.bundle_index,
                placement_group_capture_child_tasks=True,
            ),
            runtime_env=runtime_env or {},
        )


@dataclass
class Placement:
    learner: list[Slot]
    rollout: list[Slot]
    reward: list[Slot]
    groups: list[Any]

    def remove(self) -> None:
        from ray.util.placement_group import remove_placement_group

        for pg in self.groups:
            remove_placement_group(pg)


def _bundle(cpus: float, gpus: float) -> dict[str, float]:
    b = {"CPU": cpus}
    if gpus:
        b["GPU"] = gpus
    return b


def _reserve(bundles: list[dict], strategy: str, name: str, timeout_s: float):
    import ray
    from ray.util.placement_group import placement_group

    pg = placement_group(bundles, strategy=strategy, name=name)
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        raise RuntimeError(
            f"could not reserve the {name} bundles {bundles} ({strategy}) within {timeout_s:.0f}s; "
            f"cluster resources: {ray.cluster_resources()}, available: {ray.available_resources()}"
        )
    return pg


def create_placement(cfg: RootConfig, timeout_s: float = 120.0) -> Placement:
    lc, rc, wc = cfg.learner, cfg.rollout, cfg.reward
    strategy = cfg.placement.strategy
    n_reward = wc.num_actors if rc.backend == "vllm" else 0
    if cfg.placement.mode == "colocated":
        shared_gpu = max(lc.gpus_per_rank, rc.gpus_per_worker)
        bundles = [
            _bundle(
                lc.cpus_per_rank + (rc.cpus_per_worker if i < rc.num_workers else 0), shared_gpu
            )
            for i in range(lc.num_ranks)
        ]
        pg = _reserve(bundles, strategy, "rlhf-colocated", timeout_s)
        half = shared_gpu / 2 if shared_gpu else 0.0
        # Without staleness the engine waits while the learner trains (and the other way
        # round), so a CPU learner rank computes with every CPU of its bundle.
        turns = rc.max_staleness == 0 and not lc.gpus_per_rank
        learner = [
            Slot(pg, i, lc.cpus_per_rank, half, threads=int(bundles[i]["CPU"]) if turns else 0)
            for i in range(lc.num_ranks)
        ]
        rollout = [Slot(pg, i, rc.cpus_per_worker, half) for i in range(rc.num_workers)]
        groups = [pg]
    else:
        lpg = _reserve(
            [_bundle(lc.cpus_per_rank, lc.gpus_per_rank)] * lc.num_ranks,
            strategy,
            "rlhf-learner",
            timeout_s,
        )
        rpg = _reserve(
            [_bundle(rc.cpus_per_worker, rc.gpus_per_worker)] * rc.num_workers,
            strategy,
            "rlhf-rollout",
            timeout_s,
        )
        learner = [Slot(lpg, i, lc.cpus_per_rank, lc.gpus_per_rank) for i in range(lc.num_ranks)]
        rollout = [
            Slot(rpg, i, rc.cpus_per_worker, rc.gpus_per_worker) for i in range(rc.num_workers)
        ]
        groups = [lpg, rpg]
    reward = []
    if n_reward:
        wpg = _reserve(
            [_bundle(wc.cpus_per_actor, wc.gpus_per_actor)] * n_reward,
            strategy,
            "rlhf-reward",
            timeout_s,
        )
        reward = [Slot(wpg, i, wc.cpus_per_actor, wc.gpus_per_actor) for i in range(n_reward)]
        groups.append(wpg)
    return Placement(learner, rollout, reward, groups)


def spawn(
    cls: type,
    slots: list[Slot],
    make_args: Callable[[int], tuple[tuple, dict]],
    runtime_env: dict | None = None,
    *,
    max_restarts: int = 0,
    max_task_retries: int = 0,
) -> list[Any]:
    """One Ray actor of `cls` per slot; `make_args(i)` gives actor i's (args, kwargs).

    `max_restarts`: Ray restarts an actor whose process died (same slot, same constructor
    arguments) up to this many times. `max_task_retries`: calls that were in flight when it died
    are re-run on the restarted actor (only for actors whose methods are safe to repeat, like
    reward scoring; engines are re-issued their prompts by the pipeline instead, once their
    weights are current)."""
    import ray

    remote_cls = ray.remote(cls)
    actors = []
    for i, slot in enumerate(slots):
        args, kwargs = make_args(i)
        actors.append(
            remote_cls.options(
                **slot.options(runtime_env),
                max_restarts=max_restarts,
                max_task_retries=max_task_retries,
            ).remote(*args, **kwargs)
        )
    return actors


def shard(items: list, n: int) -> list[list]:
    """Split into n contiguous parts whose sizes differ by at most one."""
    q, r = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + q + (1 if i < r else 0)
        out.append(items[start:end])
        start = end
    return out
