"""A real model's shape through GRPO end to end on this CPU machine.

    python scripts/bench_realistic.py                 # Qwen2.5-0.5B's shape, 3 steps
    python scripts/bench_realistic.py --steps 2 --dtype bfloat16
    python scripts/bench_realistic.py --lora-rank 8  # the LoRA row: adapter training + sync

Builds, offline, a random-init Qwen2ForCausalLM with Qwen2.5-0.5B's config (494M parameters,
24 layers, hidden 896, 14 query / 2 key-value heads, vocab 151,936, tied embeddings, 32k
positions) and a byte-level BPE tokenizer trained with `tokenizers` on local text (this
repository's Python and Markdown files) with a Qwen-style chat template; writes a chat-format
jsonl of arithmetic prompts; then runs the real CLI (`python -m rlhf.train`) with
`model.path=` and `data.path=` on 1 learner rank (ZeRO-0) and 1 vLLM engine, the way a user
with their own model would. A random-init model earns no reward; the point is that nothing in
the path assumes the tiny model (context length, vocabulary, tied embeddings, memory).

It prints the parameter count, the time of each step (the first includes warm-ups), the
per-phase shares of the later steps, and the peak resident memory (RSS) of each actor process
(sampled every 0.5 s via psutil, grouped by Ray's process title `ray::<Class>`). Memory: fp32
weights + grads + AdamW states of 494M parameters are ~8 GB in the learner, ~2 GB of weights
plus the KV cache in vLLM; it fits a 24 GB machine with nothing else large running.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

from common import ROOT, launch_train

from rlhf import jsonl

# Qwen2.5-0.5B's config.json (the shape only; weights are random).
QWEN25_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
    hidden_act="silu",
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(out: Path, vocab_size: int):
    """Byte-level BPE trained offline on this repository's text files."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    files = [
        str(p)
        for p in ROOT.rglob("*")
        if p.suffix in (".py", ".md") and ".venv" not in p.parts and "outputs" not in p.parts
    ]
    bpe = ByteLevelBPETokenizer()
    bpe.train(
        files, vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIALS, show_progress=False
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return tok


def build_model(out: Path, tokenizer_vocab: int, dtype: str) -> int:
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    tok = build_tokenizer(out, tokenizer_vocab)
    cfg = Qwen2Config(
        **QWEN25_05B,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        dtype=dtype,
        architectures=["Qwen2ForCausalLM"],
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id
    )
    model.save_pretrained(out, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def write_data(path: Path, n: int = 200) -> None:
    import random

    rng = random.Random(0)
    with path.open("w") as f:
        for _ in range(n):
            a, b = rng.randint(0, 99), rng.randint(0, 99)
            f.write(
                json.dumps(
                    {
                        "messages": [
                            {"role": "system", "content": "You are a careful calculator."},
                            {
                                "role": "user",
                                "content": f"What is {a} + {b}? Answer with the number only.",
                            },
                        ],
                        "answer": str(a + b),
                    }
                )
                + "\n"
            )


class RssSampler(threading.Thread):
    """Peak RSS of the driver and of each of its descendant processes titled `ray::<Class>`
    (the run's actors; the local cluster's raylet is the driver's child), by class."""

    def __init__(self, driver_pid: int):
        super().__init__(daemon=True)
        self.driver_pid, self.peak, self.stop = driver_pid, defaultdict(int), threading.Event()

    def run(self):
        import psutil

        while not self.stop.is_set():
            try:
                driver = psutil.Process(self.driver_pid)
                procs = [driver] + driver.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    cmd = " ".join(p.cmdline())
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                if p.pid == self.driver_pid:
                    name = "driver (rlhf.train)"
                elif cmd.startswith("ray::"):
                    name = cmd.split()[0].split(".")[0]
                else:
                    continue
                self.peak[name] = max(self.peak[name], rss)
            self.stop.wait(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--tokenizer-vocab", type=int, default=8000)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_realistic")
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--lora-rank", type=int, default=0, help="model.lora.rank (0 = full weights)")
    args = ap.parse_args()
    model_dir, run_dir = args.out / f"model-{args.dtype}", args.out / f"run-{args.dtype}"
    if args.lora_rank:
        run_dir = run_dir.with_name(f"{run_dir.name}-lora{args.lora_rank}")
    if args.build_only:
        t0 = time.perf_counter()
        n = build_model(model_dir, args.tokenizer_vocab, args.dtype)
        write_data(args.out / "prompts.jsonl")
        (model_dir / "bench_params.json").write_text(json.dumps({"params": n}))
        print(f"built {model_dir}: {n / 1e6:.1f}M parameters in {time.perf_counter() - t0:.0f}s")
        return
    # Build in a child so its ~2 GB are freed before the run starts.
    subprocess.run(
        [
            sys.executable,
            __file__,
            "--build-only",
            "--dtype",
            args.dtype,
            "--tokenizer-vocab",
            str(args.tokenizer_vocab),
            "--out",
            str(args.out),
        ],
        check=True,
    )
    params = json.loads((model_dir / "bench_params.json").read_text())["params"]
    overrides = [
        "+experiment=grpo",
        f"model.path={model_dir}",
        f"model.dtype={args.dtype}",
        f"data.path={args.out / 'prompts.jsonl'}",
        "data.prompt_key=messages",
        "reward.fn=rlhf.reward.rules:exact_match",
        "learner.num_ranks=1",
        "learner.zero_stage=0",
        "learner.micro_batch_size=4",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=16",
        "rollout.vllm.max_model_len=1024",
        f"trainer.total_steps={args.steps}",
        "eval=off",
        "ray.num_cpus=3",
        f"model.lora.rank={args.lora_rank}",
    ]
    t0 = time.perf_counter()
    proc = launch_train(
        overrides,
        run_dir,
        # An explicit 1 GiB KV cache: vLLM CPU's share-of-memory default
        # counts the 2 GB of weights against the share and fails.
        env={"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"},
    )
    sampler = RssSampler(proc.pid)
    sampler.start()
    rc = proc.wait()
    sampler.stop.set()
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"bench_realistic: the run failed (exit {rc}); see {run_dir}")
    rows = jsonl.read(run_dir / jsonl.METRICS)
    rows = [r for r in rows if "timing/step_s" in r]
    later = rows[1:] or rows
    phases = sorted(
        {k for r in later for k in r if k.startswith("timing/") and k != "timing/step_s"}
    )
    step_mean = sum(r["timing/step_s"] for r in later) / len(later)
    print(
        f"\nbench_realistic: Qwen2.5-0.5B shape, random init, {params / 1e6:.1f}M parameters, "
        f"{args.dtype}, 1 learner rank (ZeRO-0) + 1 vLLM engine, 16 samples x <=16 new tokens"
        + (f", LoRA rank {args.lora_rank}" if args.lora_rank else "")
    )
    print(f"wall time of the run (start-up included): {wall:.0f}s")
    print(
        "step times (s): "
        + ", ".join(f"{r['timing/step_s']:.1f}" for r in rows)
        + f"  (mean of steps 2..: {step_mean:.1f}s)"
    )
    print(
        "per-phase share of steps 2..: "
        + ", ".join(
            f"{p[7:-2]} {sum(r.get(p, 0.0) for r in later) / (step_mean * len(later)):.0%}"
            for p in phases
        )
    )
    print(
        "rollout/logprob_diff per step: "
        + ", ".join(f"{r.get('rollout/logprob_diff', float('nan')):.2e}" for r in rows)
    )
    print(
        "peak RSS per process: "
        + ", ".join(
            f"{k} {v / 2**30:.2f} GiB" for k, v in sorted(sampler.peak.items(), key=lambda x: -x[1])
        )
    )


if __name__ == "__main__":
    main()
