"""Single-GPU benchmark, no internet: random-init models built from config (Qwen2.5 shapes,
about 0.5B and 1.5B parameters), nothing downloaded.

    python scripts/bench_gpu.py [--sizes 0.5B,1.5B] [--peak-tflops N] [--out FILE]

Measures and prints, for each size:
- learner: tokens/s of forward + backward + AdamW in bf16 (the learner's work per token), and
  MFU = 6 * params * tokens/s / peak bf16 FLOP/s (peak from the device name, or --peak-tflops);
- weight broadcast: rlhf's WeightSyncGroup (flatten buckets + NCCL broadcast, the path the
  learner uses) / a raw device-to-device copy of the same bytes. With one GPU the NCCL group has
  world size 1 (no peer: it measures the flattening and the NCCL call, not a link); with two
  or more GPUs rank 1 receives on the second GPU;
- generation: HF `generate` tokens/s at several batch sizes (vLLM's CUDA build is not assumed).
Finishes in under 5 minutes on one H100/H200-class GPU. Without CUDA it exits with code 2 and
says so before doing anything.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Qwen2.5-0.5B / -1.5B shapes (tied embeddings), random init.
SHAPES = {
    "0.5B": dict(
        hidden_size=896,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        intermediate_size=4864,
    ),
    "1.5B": dict(
        hidden_size=1536,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        intermediate_size=8960,
    ),
}
VOCAB = 151936

# Dense bf16 peak TFLOP/s by device-name substring (vendor datasheets, without sparsity).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
    "4090": 165.0,
    "B200": 2250.0,
}


def model_config(size: str):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        rope_theta=1e6,
        **SHAPES[size],
    )


def count_params(size: str) -> int:
    """Parameters of the random-init model, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(model_config(size))
    return sum(p.numel() for p in m.parameters())


def mfu(params: int, tokens_per_s: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation of training: 6 FLOPs per parameter per token (forward 2,
    backward 4), attention FLOPs left out (small at these lengths)."""
    return 6.0 * params * tokens_per_s / (peak_tflops * 1e12)


def peak_for(name: str) -> float | None:
    for key, v in PEAK_BF16_TFLOPS.items():
        if key in name:
            return v
    return None


def timed(fn, reps: int) -> list[float]:
    import torch

    out = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        out.append(time.perf_counter() - t)
    return out


def bench_learner(model, params: int, peak: float | None, batch: int, seq: int) -> dict:
    import torch

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
    ids = torch.randint(0, VOCAB, (batch, seq), device="cuda")

    def step():
        out = model(input_ids=ids, labels=ids, use_cache=False)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up (allocator, kernels)
    ts = timed(step, 5)
    tps = batch * seq / statistics.median(ts)
    opt.state.clear()  # free the Adam moments before the next size
    torch.cuda.empty_cache()
    return {
        "batch": batch,
        "seq": seq,
        "step_s": ts,
        "tokens_per_s": tps,
        "mfu": mfu(params, tps, peak) if peak else None,
    }


def _receiver(port: int, meta, bucket_bytes: int, reps: int) -> None:
    import torch

    from rlhf.rollout.weight_sync import WeightSyncGroup

    torch.cuda.set_device(1)
    g = WeightSyncGroup("127.0.0.1", port, 1, 2, torch.device("cuda", 1), meta, bucket_bytes)
    for _ in range(reps + 1):
        for _name, _t in g.receive():
            pass
    torch.cuda.synchronize()


def bench_broadcast(model, bucket_mb: int = 256, reps: int = 5) -> dict:
    import multiprocessing as mp

    import torch

    from rlhf.rollout.weight_sync import WeightSyncGroup, describe, free_port

    named = list(model.named_parameters())
    meta = describe(named)
    nbytes = sum(p.numel() * p.element_size() for _, p in named)
    world = 2 if torch.cuda.device_count() >= 2 else 1
    port = free_port()
    proc = None
    if world == 2:
        proc = mp.get_context("spawn").Process(
            target=_receiver, args=(port, meta, bucket_mb << 20, reps)
        )
        proc.start()
    g = WeightSyncGroup("127.0.0.1", port, 0, world, torch.device("cuda", 0), meta, bucket_mb << 20)
    tensors = [p.detach() for _, p in named]
    g.send(tensors)  # warm-up: NCCL communicator set-up
    sync = timed(lambda: g.send(tensors), reps)
    target = torch.device("cuda", 1) if world == 2 else torch.device("cuda", 0)
    dst = [torch.empty_like(t, device=target) for t in tensors]

    def raw():
        for d, t in zip(dst, tensors):
            d.copy_(t, non_blocking=True)

    raw()
    copy = timed(raw, reps)
    if proc is not None:
        proc.join(timeout=120)
    return {
        "bytes": nbytes,
        "world_size": world,
        "sync_s": sync,
        "raw_copy_s": copy,
        "ratio": statistics.median(sync) / statistics.median(copy),
        "sync_GBps": nbytes / 1e9 / statistics.median(sync),
    }


def bench_generate(
    model, batches=(1, 16, 64), prompt_len: int = 128, new_tokens: int = 128
) -> list[dict]:
    import torch

    out = []
    for b in batches:
        ids = torch.randint(0, VOCAB, (b, prompt_len), device="cuda")

        def gen(ids=ids):
            with torch.no_grad():
                model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    pad_token_id=0,
                )

        gen()
        ts = timed(gen, 2)
        out.append(
            {
                "batch": b,
                "new_tokens": new_tokens,
                "s": ts,
                "tokens_per_s": b * new_tokens / statistics.median(ts),
            }
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="0.5B,1.5B")
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="dense bf16 peak of the GPU (default: from its name)",
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        p.error(f"unknown size(s) {unknown}; choose from {list(SHAPES)}")

    import torch

    if not torch.cuda.is_available():
        print(
            "bench_gpu.py needs a CUDA GPU: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}). Run it on a GPU "
            "machine; on CPU use scripts/bench.py.",
            file=sys.stderr,
        )
        return 2
    name = torch.cuda.get_device_name(0)
    peak = args.peak_tflops or peak_for(name)
    info = {
        "gpu": name,
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "peak_bf16_tflops": peak,
    }
    print(f"machine: {info}", flush=True)
    results = {"machine": info, "sizes": {}}
    t0 = time.time()
    from transformers import AutoModelForCausalLM

    for size in sizes:
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(model_config(size), dtype=torch.bfloat16)
        params = sum(p.numel() for p in model.parameters())
        r = {"params": params}
        print(f"== {size}: {params / 1e9:.2f}B parameters", flush=True)
        model.train()
        r["learner"] = bench_learner(model, params, peak, args.batch, args.seq)
        lr = r["learner"]
        print(
            f"  learner: {lr['tokens_per_s']:,.0f} tokens/s (batch {lr['batch']} x {lr['seq']}), "
            f"MFU {lr['mfu']:.1%}"
            if lr["mfu"] is not None
            else f"  learner: {lr['tokens_per_s']:,.0f} tokens/s "
            "(peak unknown: pass --peak-tflops)",
            flush=True,
        )
        model.eval()
        r["broadcast"] = bench_broadcast(model)
        b = r["broadcast"]
        print(
            f"  weight broadcast (NCCL, world {b['world_size']}): "
            f"{statistics.median(b['sync_s']) * 1e3:.1f} ms for {b['bytes'] / 1e9:.2f} GB "
            f"({b['sync_GBps']:.0f} GB/s) vs raw device copy "
            f"{statistics.median(b['raw_copy_s']) * 1e3:.1f} ms: {b['ratio']:.2f}x",
            flush=True,
        )
        r["generate"] = bench_generate(model)
        for g in r["generate"]:
            print(
                f"  HF generate batch {g['batch']:>3}: {g['tokens_per_s']:,.0f} tokens/s "
                f"({g['new_tokens']} new tokens)",
                flush=True,
            )
        results["sizes"][size] = r
        del model
        torch.cuda.empty_cache()
    results["elapsed_s"] = time.time() - t0
    print(f"done in {results['elapsed_s']:.0f} s")
    out = (
        Path(args.out)
        if args.out
        else ROOT / "outputs" / "bench" / f"bench_gpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"JSON: {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
