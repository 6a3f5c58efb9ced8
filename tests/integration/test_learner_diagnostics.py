"""learner.diagnostics_every on the real DeepSpeed learner (1 gloo rank in a spawned process, no
Ray): the post-update diagnostics (algo/update_kl, algo/update_gain) appear on the first and on
every N-th update only, and the pace survives a checkpoint: the update counter is restored with
the weights."""

import os
import socket
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.integration

DIAGNOSTICS = {"algo/update_kl", "algo/update_gain"}


def batch():
    from rlhf.batch import Sample, collate

    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(8):
        ids = torch.randint(5, 15, (4 + 3,), generator=g).tolist()
        samples.append(
            Sample(
                group_id=i // 4,
                prompt_ids=ids[:4],
                response_ids=ids[4:],
                rollout_logprobs=[-1.0] * 3,
            )
        )
    b = collate(samples)
    b.advantages = torch.randn(b.action_mask.shape, generator=g) * b.action_mask
    return b


def rank_main(port: int, model_path: str, ckpt: str, out) -> None:
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    try:
        from rlhf.config import AlgoConfig, LearnerConfig, ModelConfig
        from rlhf.learner.worker import LearnerWorker

        w = LearnerWorker(
            LearnerConfig(num_ranks=1, micro_batch_size=8, diagnostics_every=2),
            AlgoConfig(lr=1e-3),
            ModelConfig(),
            model_path,
            rank=0,
            world_size=1,
            temperature=1.0,
            total_steps=10,
            seed=0,
            grad_accum_steps=1,
        )
        w.setup("127.0.0.1", port)
        b = batch()
        b = replace(b, **w.compute_logprobs(b))
        seen = []
        for i in range(4):
            seen.append(sorted(DIAGNOSTICS & set(w.update(b))))
            if i == 0:
                w.save(ckpt, "after-1")
        w.load(ckpt, "after-1")  # one update done: the next is the 2nd (not the 5th)
        seen.append(sorted(DIAGNOSTICS & set(w.update(b))))
        out.put(seen)
    except BaseException as e:  # surface the failure in the parent
        out.put(repr(e))
        raise


def test_diagnostics_every_second_update_and_across_a_checkpoint(tmp_path):
    from rlhf.models.tiny import build_tiny_model

    model_path = str(
        build_tiny_model(
            tmp_path / "tiny",
            hidden_size=64,
            num_layers=2,
            num_heads=2,
            head_dim=32,
            intermediate_size=128,
            warmup_steps=0,
        )
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=rank_main, args=(port, model_path, str(tmp_path / "ckpt"), out))
    proc.start()
    seen = out.get(timeout=300)
    proc.join(timeout=60)
    assert isinstance(seen, list), seen
    every = sorted(DIAGNOSTICS)
    # updates 1 (the first is always measured), 2, 3, 4; then the 2nd again after the load
    assert seen == [every, every, [], every, every], seen
