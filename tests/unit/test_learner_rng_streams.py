"""Each learner rank's random streams survive a checkpoint as its own: DeepSpeed writes
`client_state` once (from rank 0) and every rank loads that copy, so the streams go in a file per
rank (LearnerWorker.save/load). With rank 0's copy, rank 1 resumed with rank 0's shuffle order
and a resumed run differed from the uninterrupted one at float32 rounding (scripts/chaos.py)."""

import os
import random
from types import SimpleNamespace

import torch

from rlhf.learner.worker import LearnerWorker


class Engine:
    """DeepSpeed's behaviour that matters here: client_state is kept from rank 0 only."""

    saved: dict = {}
    checkpoint_engine = SimpleNamespace()

    def __init__(self, rank):
        self.rank = rank

    def save_checkpoint(self, folder, tag, save_latest, client_state, exclude_frozen_parameters):
        os.makedirs(os.path.join(folder, tag), exist_ok=True)
        if self.rank == 0:
            Engine.saved = client_state

    def load_checkpoint(self, folder, tag, load_module_strict):
        return os.path.join(folder, tag), Engine.saved


def worker(rank: int) -> LearnerWorker:
    w = object.__new__(LearnerWorker)  # no DeepSpeed: only the fields save/load touch
    w.rank, w.updates, w.engine = rank, 3, Engine(rank)
    w.shuffle_gen = torch.Generator().manual_seed(100 + rank)
    w.loss_params = SimpleNamespace(generator=torch.Generator().manual_seed(200 + rank))
    w._build = {"model_cfg": SimpleNamespace(uses_lora=False)}
    return w


def test_every_rank_resumes_its_own_shuffle_and_loss_streams(tmp_path):
    ranks = [worker(0), worker(1)]
    for w in ranks:
        torch.randperm(8, generator=w.shuffle_gen)  # some steps before the checkpoint
        w.save(str(tmp_path), "state")
    expected = [
        (
            torch.randperm(8, generator=w.shuffle_gen),
            torch.rand(3, generator=w.loss_params.generator),
        )
        for w in ranks
    ]
    py_state, torch_state = random.getstate(), torch.get_rng_state()
    for w in ranks:  # a fresh process per rank, streams from the start, then the checkpoint
        fresh = worker(w.rank)
        fresh.load(str(tmp_path), "state")
        order = torch.randperm(8, generator=fresh.shuffle_gen)
        pick = torch.rand(3, generator=fresh.loss_params.generator)
        assert torch.equal(order, expected[w.rank][0]), f"rank {w.rank}: another shuffle order"
        assert torch.equal(pick, expected[w.rank][1]), f"rank {w.rank}: another loss stream"
        assert fresh.updates == 3
    random.setstate(py_state)
    torch.set_rng_state(torch_state)
