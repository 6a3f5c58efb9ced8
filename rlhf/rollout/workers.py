"""What every rollout role (VllmRollout, GymRollout) shares: its worker actors and their side of
the weight sync. The roles differ in what the workers produce (samples from prompts, or env
trajectory segments) and in their metrics, not in how they join the learner's broadcast."""

from __future__ import annotations

from typing import Any

from rlhf.faults import worker_index


class RolloutWorkers:
    """`workers`: the rollout actors, each `ranks_per_worker` receivers of the weight-sync
    group (a vLLM engine's tensor-parallel workers; 1 for a gym runner), which take ranks
    1..sync_ranks after learner rank 0. Methods return ObjectRefs; the driver calls ray.get."""

    def __init__(self, workers: list, ranks_per_worker: int = 1):
        self.workers, self.ranks_per_worker = workers, ranks_per_worker
        self.sync_ranks = len(workers) * ranks_per_worker

    def init_weight_sync(
        self, host: str, port: int, world_size: int, meta, bucket_bytes: int
    ) -> list[Any]:
        per = self.ranks_per_worker
        return [
            w.init_weight_sync.remote(host, port, 1 + i * per, world_size, meta, bucket_bytes)
            for i, w in enumerate(self.workers)
        ]

    def receive_weights(self, version: int) -> list[Any]:
        return [w.receive_weights.remote(version) for w in self.workers]

    def index_of(self, error: Exception) -> int:
        """Which worker `error` (a dead actor's) came from."""
        return worker_index(self.workers, error)
