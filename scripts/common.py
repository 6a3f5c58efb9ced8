"""What the scripts share (they import only the `rlhf` package and this module): the composed
config and model folders the way `rlhf.train` makes them, the model sizes of the benchmarks,
launching and following a `python -m rlhf.train` subprocess, and the bare learner the
benchmarks measure our learner against.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rlhf.compose import compose

ROOT = Path(__file__).resolve().parent.parent

# Random-init models for the size sweeps (warm-up off): ~17M and ~134M parameters.
SIZES = {
    "tiny": [],
    "17M": [
        "model.tiny.hidden_size=512",
        "model.tiny.num_layers=4",
        "model.tiny.num_heads=8",
        "model.tiny.intermediate_size=2048",
        "model.tiny.warmup_steps=0",
    ],
    "134M": [
        "model.tiny.hidden_size=1024",
        "model.tiny.num_layers=8",
        "model.tiny.num_heads=16",
        "model.tiny.intermediate_size=4096",
        "model.tiny.warmup_steps=0",
    ],
}

# A benchmark's run of ours: nothing beyond training (no W&B, report or final checkpoint).
QUIET_RUN = ["logger.wandb.mode=disabled", "trainer.save_final=false", "trainer.report=false"]


def grpo(*overrides: str):
    """(validated RootConfig, resolved dict) of `+experiment=grpo OVERRIDES`."""
    return compose("+experiment=grpo", *overrides)


def model_path(size: str = "tiny", seed: int = 0) -> str:
    """The built-in tiny model at `size`, built (and cached) exactly as rlhf.train builds it."""
    from rlhf.train import resolve_model_path

    cfg, _ = grpo(*SIZES[size], f"seed={seed}")
    return resolve_model_path(cfg)


# --------------------------------------------------------------------------------------------
# `python -m rlhf.train` in a subprocess
# --------------------------------------------------------------------------------------------


def launch_train(overrides: list[str], run_dir: Path, **popen) -> subprocess.Popen:
    """`python -m rlhf.train OVERRIDES` writing to `run_dir`, with QUIET_RUN's settings (later
    overrides win); `popen` goes to subprocess.Popen (stdout, stderr, text, env additions)."""
    env = {**os.environ, "WANDB_MODE": "disabled", **popen.pop("env", {})}
    cmd = [sys.executable, "-m", "rlhf.train", f"hydra.run.dir={run_dir}", *QUIET_RUN, *overrides]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, **popen)


def kill_after(proc: subprocess.Popen, timeout_s: float) -> threading.Timer:
    """A started watchdog that kills `proc` after `timeout_s` (cancel it when done): a silent,
    hung child must not hang the benchmark."""
    timer = threading.Timer(timeout_s, proc.kill)
    timer.start()
    return timer


class MetricsTail:
    """The rows appended to a running run's metrics.jsonl, each complete line once, with the
    wall time it was first seen; a half-written last line waits for the next call."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def new_rows(self) -> list[tuple[dict, float]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        now = time.time()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [(json.loads(line), now) for line in complete.splitlines()]


def interrupt(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGINT a still-running child the way a user stops a run (it finishes the step and shuts
    Ray down); kill it if it has not exited within `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --------------------------------------------------------------------------------------------
# In-process learnability probes (scripts/learnability*.py)
# --------------------------------------------------------------------------------------------


def run_probe(ap, run_seed, metric: str, tmp_prefix: str):
    """A probe's main: the options every probe shares (--seeds, --cache-dir, --threads,
    --verbose) added to `ap` and parsed, torch on --threads threads, then `run_seed(args, seed)`
    for each seed, printing its curve (`metric` per 10 steps) as it ends. Returns (args, the
    results)."""
    import tempfile

    import torch

    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cache-dir", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true", help=f"print the {metric} every 10 steps")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.cache_dir is None:
        args.cache_dir = tempfile.mkdtemp(prefix=tmp_prefix)
    print(f"config: {vars(args)}", flush=True)
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args, seed))
        curve = " ".join(f"{c:.2f}" for c in rows[-1]["curve"])
        print(f"seed {seed} {metric} per 10 steps: {curve}", flush=True)
    print()
    return args, rows


# --------------------------------------------------------------------------------------------
# The bare learner (the baseline of bench.py's learner rows and of bench_overhead.py's loop)
# --------------------------------------------------------------------------------------------


class BareLearner:
    """The same policy module, loss functions and AdamW, micro-batching and one optimizer step
    per minibatch, without DeepSpeed or Ray in the loop."""

    def __init__(self, cfg, path: str):
        import torch

        from rlhf import algos
        from rlhf.learner.worker import build_policy

        self.cfg, self.algo = cfg, cfg.algo
        torch.manual_seed(0)
        self.policy = build_policy(cfg.model, path, 1.0)
        a = cfg.algo
        self.opt = torch.optim.AdamW(
            self.policy.parameters(), lr=a.lr, weight_decay=a.weight_decay, eps=a.adam_eps
        )
        self.loss_fn = algos.POLICY_LOSSES.get(a.policy_loss)
        self.agg = algos.LOSS_AGGREGATIONS.get(a.loss_agg)
        self.params = algos.PolicyLossParams(
            clip_low=a.clip_low, clip_high=a.clip_high, dual_clip=a.dual_clip
        )

    def update(self, batch) -> float:
        """One update (algo.epochs x algo.minibatches optimizer steps) on `batch`; seconds."""
        import torch

        from rlhf import algos

        t = time.perf_counter()
        a, micro = self.algo, self.cfg.learner.micro_batch_size
        self.own_old = []  # without old logprobs in `batch`: the ones it took, in row order
        for _ in range(a.epochs):
            for mb in batch.split(a.minibatches):
                totals = algos.AggTotals.of(mb.action_mask)  # the minibatch's, for every part
                for m in mb.split(max(1, len(mb) // micro)):
                    logprobs, entropy, _ = self.policy(m)
                    old = m.old_logprobs
                    if old is None:  # the update's own, as LearnerWorker (old_logprobs_from_update)
                        old = logprobs.detach()
                        self.own_old.append(old)
                    per_token, _ = self.loss_fn(
                        logprobs, old, m.advantages, m.action_mask, self.params
                    )
                    loss = self.agg(per_token, m.action_mask, totals) - a.entropy_coef * self.agg(
                        entropy, m.action_mask, totals
                    )
                    loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), a.grad_clip)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t
