"""Faults the driver recovers from, shared by the rollout actors that raise them and the
pipeline and trainer that handle them.

A rollout worker (vLLM engine or gym env runner) is a Ray actor with `max_restarts`: when its
process dies, Ray starts a new one with the same constructor arguments. The new one serves the
base weights and is in no weight-sync group, so until the trainer has re-synced it, it refuses
work with `NotSynced` instead of producing samples from the wrong policy.
"""

from __future__ import annotations


class NotSynced(RuntimeError):
    """Raised by a rollout worker that has not received weights since it (re)started."""

    def __init__(self, index: int):
        super().__init__(f"rollout worker {index} has not received weights since it started")
        self.index = index


class WorkerLost(RuntimeError):
    """A rollout worker died (or came back without weights) while holding work."""

    def __init__(self, index: int, reason: str = ""):
        super().__init__(f"rollout worker {index} was lost: {reason}")
        self.index, self.reason = index, reason


class RunFailed(RuntimeError):
    """The run cannot go on; the message says why and how to resume."""


class Stopped(Exception):
    """The run stopped on a signal after saving; `signum` is that signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def restarted_actor() -> bool:
    """True inside a Ray actor that Ray restarted after its process died."""
    try:
        import ray

        return ray.get_runtime_context().was_current_actor_reconstructed
    except Exception:  # not in an actor (tests drive workers in-process)
        return False


def rollout_errors():
    """The exceptions that mean 'a rollout worker is gone or unsynced' (Ray's need an import)."""
    from ray.exceptions import RayActorError

    return (RayActorError, NotSynced)


def actor_index(actors: list, error: Exception) -> int | None:
    """Which of `actors` (Ray actor handles) a RayActorError is about, or None."""
    actor_id = getattr(error, "actor_id", None)
    for i, a in enumerate(actors):
        if actor_id is not None and a._actor_id.hex() == actor_id:
            return i
    return None


def worker_index(workers: list, error: Exception) -> int:
    """Which rollout worker an error from a rollout call came from."""
    if isinstance(error, NotSynced):
        return error.index
    index = actor_index(workers, error)
    if index is None:
        raise RunFailed(
            f"a rollout call failed and its worker cannot be identified: {error}"
        ) from error
    return index
