"""LearnerGroup: the data-parallel learner ranks as one object.

Methods shard the batch over ranks and return Ray ObjectRefs, so the driver's `ray.get` stays
visible; `attach` and `reduce` turn the per-rank results back into one batch / one metrics dict.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from rlhf.batch import Batch
from rlhf.config import AlgoConfig, LearnerConfig, ModelConfig
from rlhf.learner.old_logprobs import old_logprobs_from_update
from rlhf.learner.worker import LearnerWorker
from rlhf.placement import Slot, spawn


class LearnerGroup:
    def __init__(
        self,
        cfg: LearnerConfig,
        algo: AlgoConfig,
        model_cfg: ModelConfig,
        model_path: str,
        slots: list[Slot],
        *,
        rows_per_step: int,
        temperature: float,
        total_steps: int,
        seed: int,
        env_spec=None,
        runtime_env: dict | None = None,
    ):
        import ray

        self.cfg = cfg
        n = cfg.num_ranks
        # The update takes the old logprobs from its own forward pass when that is exact
        # (rlhf/learner/old_logprobs.py; the ranks decide the same): scores_for_update then
        # scores only what else is needed (the reference), or nothing at all.
        has_critic = algo.advantage == "gae" or env_spec is not None
        self.old_from_update = old_logprobs_from_update(algo, has_critic)
        self.scores_needed = not self.old_from_update or algo.kl_coef > 0
        # Rows each rank sees per optimizer step, in micro-batches (validate() checked this).
        grad_accum = rows_per_step // (algo.minibatches * n * cfg.micro_batch_size)
        self.actors = spawn(
            LearnerWorker,
            slots,
            lambda i: (
                (cfg, algo, model_cfg, model_path),
                dict(
                    rank=i,
                    world_size=n,
                    temperature=temperature,
                    total_steps=total_steps,
                    seed=seed,
                    grad_accum_steps=grad_accum,
                    env_spec=env_spec,
                    threads=slots[i].threads,
                ),
            ),
            runtime_env,
        )
        master_addr, master_port = ray.get(self.actors[0].address.remote())
        ray.get([a.setup.remote(master_addr, master_port) for a in self.actors])

    def __len__(self) -> int:
        return len(self.actors)

    # Each method returns one ObjectRef per rank.
    def compute_logprobs(self, batch: Batch) -> list[Any]:
        """Old logprobs, values and reference logprobs as configured."""
        return [a.compute_logprobs.remote(s) for a, s in zip(self.actors, batch.split(len(self)))]

    def scores_for_update(self, batch: Batch) -> list[Any]:
        """What the advantages and the update need before it (Trainer.step): compute_logprobs
        without the old logprobs where the update supplies them (old_from_update), only the
        reference's then, or no call at all ([])."""
        if not self.scores_needed:
            return []
        with_old = not self.old_from_update
        return [
            a.compute_logprobs.remote(s, with_old)
            for a, s in zip(self.actors, batch.split(len(self)))
        ]

    def update(self, batch: Batch) -> list[Any]:
        return [a.update.remote(s) for a, s in zip(self.actors, batch.split(len(self)))]

    def init_weight_sync(self, host: str, port: int, world_size: int) -> list[Any]:
        bucket = self.cfg.sync_bucket_mb << 20
        return [a.init_weight_sync.remote(host, port, world_size, bucket) for a in self.actors]

    def broadcast_weights(self) -> list[Any]:
        return [a.broadcast_weights.remote() for a in self.actors]

    def save(self, folder: str, tag: str) -> list[Any]:
        return [a.save.remote(folder, tag) for a in self.actors]

    def load(self, folder: str, tag: str) -> list[Any]:
        return [a.load.remote(folder, tag) for a in self.actors]

    def export_hf(self, folder: str) -> list[Any]:
        """The policy as a Hugging Face folder, consolidated from any ZeRO stage (rank 0 writes)."""
        return [a.export_hf.remote(folder) for a in self.actors]

    def weight_meta(self) -> Any:
        return self.actors[0].weight_meta.remote()

    def sync_address(self) -> Any:
        return self.actors[0].address.remote()

    @staticmethod
    def attach(batch: Batch, per_rank: list[dict[str, torch.Tensor]]) -> Batch:
        """Concatenate the ranks' compute_logprobs results onto the batch."""
        if not per_rank:
            return batch
        return replace(batch, **{k: torch.cat([r[k] for r in per_rank]) for k in per_rank[0]})

    @staticmethod
    def reduce(per_rank: list[dict[str, float]]) -> dict[str, float]:
        """The group's update metrics: every rank returns the same values, already reduced
        over all ranks' rows (rlhf/learner/reduce.py), so rank 0's are the group's."""
        return dict(per_rank[0])
