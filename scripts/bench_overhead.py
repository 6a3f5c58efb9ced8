"""Framework overhead (make bench's overhead row): seconds per training step of the full Ray
pipeline against a bare single-process loop doing the same work per step on the same model and
batch.

    python scripts/bench_overhead.py [--steps 20] [--reps 2] [--configs default,matched]
                                     [--skip 3] [-- extra Hydra overrides]

Ours: the Trainer exactly as `python -m rlhf.train +experiment=grpo` builds it (rlhf/train.py
`build_trainer`), started once per configuration; every block restores the learner's initial
state (weights and optimizer) and sends it to the engine (`Trainer.restart`), then trains
`--steps` steps with a fresh pipeline (same prompts, same per-sample seeds every block).
Two configurations:
- default: the experiment as shipped (2 DeepSpeed learner ranks, 1 vLLM engine, 1 reward actor,
  disaggregated, 4 logical Ray CPUs);
- matched: the closest match to one process (placement=colocated, 1 learner rank, 1 engine:
  one bundle that the engine and the learner take turns on). The issue's ratio is this one.

Bare (the baseline): one process, no Ray, no DeepSpeed. Per step it draws the same prompts
(rlhf.data.PromptSource), generates with vLLM in-process (`vllm.LLM`, the arguments of
rlhf/rollout/vllm_engine.py, same SamplingParams and per-sample seeds), scores with the task's
reward (rlhf/tasks.py) in-process, collates, computes old logprobs with the policy module,
group-normalised advantages (rlhf/algos.py), one update (scripts/common.py BareLearner: same
policy module, loss, aggregation, AdamW, micro-batches), and loads the new weights into the
in-process vLLM model with the same layerwise reload our receiver uses (its "weight sync": a
copy within one process). It runs in its own process (a server reading commands on stdin), so
that its blocks can alternate with ours without paying either side's start-up again.

Per block the steady-state s/step is the median wall time between step ends after skipping the
first `--skip` steps; the table reports the median over blocks (spread min-max), the ratio
ours / bare per configuration, and the per-phase medians of both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, BareLearner, grpo, kill_after

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONFIGS = {
    "default": [],
    "matched": ["placement=colocated", "learner.num_ranks=1", "rollout.num_workers=1"],
    # Diagnostic (not in bench.py's run): matched, with the learner reserving 2 CPUs, so that
    # Ray gives it OMP_NUM_THREADS=2 -- the threads the bare process's torch uses.
    "matched_2cpu": [
        "placement=colocated",
        "learner.num_ranks=1",
        "rollout.num_workers=1",
        "learner.cpus_per_rank=2",
    ],
}
# Every run: no eval, checkpoints, report or W&B (none of them is part of a training step).
COMMON = [
    "logger.wandb.mode=disabled",
    "logger.console_every=1000000",
    "trainer.report=false",
    "trainer.save_final=false",
    "trainer.save_every=0",
    "trainer.save_every_min=0",
    "eval.every=0",
    "trainer.resume=never",
]
PHASES = ("rollout", "logprobs", "advantage", "update", "sync")
MARK = "BENCH_OVERHEAD "  # the bare server's reply lines start with this


def compose(steps: int, extra: list[str]):
    """(validated config, resolved dict) of one side's run: the grpo experiment, COMMON, `extra`."""
    return grpo(f"trainer.total_steps={steps}", *COMMON, *extra)


def steady(values: list[float], skip: int) -> float:
    """Median after the first `skip` (warm-up) values."""
    return statistics.median(values[skip:] if len(values) > skip else values)


# --------------------------------------------------------------------------------------------
# the bare single-process loop
# --------------------------------------------------------------------------------------------


class BareLoop:
    """generate -> reward -> collate -> old logprobs -> advantages -> update -> load weights,
    all in this process."""

    def __init__(self, cfg, model_path: str):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        import torch
        from vllm import LLM

        from rlhf import algos
        from rlhf.tasks import get_task

        self.cfg = cfg
        r = cfg.rollout
        # VllmEngine's arguments (engine index 0), without the weight-sync worker extension.
        self.llm = LLM(
            model=model_path,
            dtype=cfg.model.dtype,
            seed=cfg.seed,
            gpu_memory_utilization=r.vllm.gpu_memory_utilization,
            enforce_eager=r.vllm.enforce_eager,
            max_model_len=r.vllm.max_model_len,
            tensor_parallel_size=r.vllm.tensor_parallel_size,
            enable_prefix_caching=r.vllm.enable_prefix_caching,
            logprobs_mode="processed_logprobs",
        )
        self.learner = BareLearner(cfg, model_path)
        self.task = get_task(cfg.data.task)
        self.advantage_fn = algos.ADVANTAGE_ESTIMATORS.get(cfg.algo.advantage)
        self.advantage_params = algos.AdvantageParams(gamma=cfg.algo.gamma, lam=cfg.algo.lam)
        self.initial = {k: v.detach().clone() for k, v in self.learner.policy.state_dict().items()}
        self.threads = torch.get_num_threads()

    def reset(self, seed: int) -> None:
        """The initial weights and a fresh AdamW, in the policy and in vLLM; a fresh prompt
        stream."""
        import torch

        from rlhf.data import PromptSource

        a = self.cfg.algo
        self.learner.policy.load_state_dict(self.initial)
        self.learner.opt = torch.optim.AdamW(
            self.learner.policy.parameters(), lr=a.lr, weight_decay=a.weight_decay, eps=a.adam_eps
        )
        self.prompts, self.seed = PromptSource(self.cfg.data, seed), seed
        self.sync()

    def rollout(self):
        from vllm import SamplingParams

        from rlhf.batch import Sample
        from rlhf.pipeline import sample_seed

        c = self.cfg.rollout
        drawn = self.prompts.next(c.prompts_per_step)
        reqs = [(p, i) for p in drawn for i in range(c.samples_per_prompt)]
        params = [
            SamplingParams(
                n=1,
                seed=sample_seed(self.seed, p["group_id"], i),
                logprobs=0,
                top_p=c.top_p,
                top_k=c.top_k,
                temperature=c.temperature,
                max_tokens=c.max_new_tokens,
            )
            for p, i in reqs
        ]
        t = time.perf_counter()
        outputs = self.llm.generate([p["prompt"] for p, _ in reqs], params, use_tqdm=False)
        generate_s = time.perf_counter() - t
        samples = []
        for (p, i), out in zip(reqs, outputs):
            o = out.outputs[0]
            ids = list(o.token_ids)
            samples.append(
                Sample(
                    group_id=p["group_id"],
                    prompt_ids=list(out.prompt_token_ids),
                    response_ids=ids,
                    rollout_logprobs=[lp[t].logprob for t, lp in zip(ids, o.logprobs)],
                    prompt=p["prompt"],
                    response=o.text,
                    answer=p["answer"],
                    finish_reason=o.finish_reason or "",
                    info={"sample_index": i},
                )
            )
        t = time.perf_counter()
        for s in samples:
            s.reward = self.task.score(s.response, s.answer)
        return samples, generate_s, time.perf_counter() - t

    def old_logprobs(self, batch):
        import torch

        from rlhf.learner.group import LearnerGroup

        policy, micro = self.learner.policy, self.cfg.learner.micro_batch_size
        policy.eval()
        with torch.no_grad():
            parts = [
                policy(m, with_entropy=False)[0] for m in batch.split(max(1, len(batch) // micro))
            ]
        policy.train()
        return LearnerGroup.attach(batch, [{"old_logprobs": torch.cat(parts)}])

    def advantages(self, batch):
        from dataclasses import replace

        from rlhf import algos

        adv, ret = self.advantage_fn(
            algos.AdvantageInputs(
                token_rewards=batch.token_rewards,
                mask=batch.action_mask,
                group_ids=batch.group_ids,
                seq_rewards=batch.seq_rewards,
            ),
            self.advantage_params,
        )
        return replace(batch, advantages=adv, returns=ret)

    def sync(self) -> None:
        """The new weights into the in-process vLLM model: vLLM's layerwise reload around
        load_weights, as rlhf.rollout.weight_sync.VllmWeightReceiver does."""
        from vllm.model_executor.model_loader.reload import (
            finalize_layerwise_reload,
            initialize_layerwise_reload,
        )

        named = [(n, p.detach()) for n, p in self.learner.policy.rollout_state()]

        def load(worker):  # in-process engine: collective_rpc calls this on the worker directly
            model = worker.model_runner.get_model()
            initialize_layerwise_reload(model)
            model.load_weights(weights=iter(named))
            finalize_layerwise_reload(model, worker.model_runner.model_config)

        self.llm.collective_rpc(load)
        self.llm.reset_prefix_cache()

    def step(self) -> dict[str, float]:
        from dataclasses import replace

        import torch

        from rlhf import algos
        from rlhf.batch import collate
        from rlhf.learner.old_logprobs import old_logprobs_from_update

        t0 = time.perf_counter()
        samples, generate_s, reward_s = self.rollout()
        t1 = time.perf_counter()
        batch = collate(samples)  # between phases, as in Trainer.step
        t1b = time.perf_counter()
        if not old_logprobs_from_update(self.cfg.algo, has_critic=False):  # as the trainer
            batch = self.old_logprobs(batch)
        t2 = time.perf_counter()
        batch = self.advantages(batch)
        t3 = time.perf_counter()
        self.learner.update(batch.learning_rows())
        t4 = time.perf_counter()
        if batch.old_logprobs is None:  # one minibatch, in order: the update's own
            batch = replace(batch, old_logprobs=torch.cat(self.learner.own_old))
        self.sync()
        t5 = time.perf_counter()
        return {
            "timing/rollout_s": t1 - t0,
            "timing/generate_s": generate_s,
            "timing/reward_s": reward_s,
            "timing/logprobs_s": t2 - t1b,
            "timing/advantage_s": t3 - t2,
            "timing/update_s": t4 - t3,
            "timing/sync_s": t5 - t4,
            "timing/step_s": t5 - t0,
            "rollout/response_len_mean": sum(len(s.response_ids) for s in samples) / len(samples),
            "reward/mean": sum(s.reward for s in samples) / len(samples),
            # vLLM's logprobs vs the policy's, as the trainer logs it: ~0 when the engine
            # serves the weights that were loaded into it (the bare sync is checked here).
            "rollout/logprob_diff": float(
                algos.masked_mean(
                    (batch.rollout_logprobs - batch.old_logprobs).abs(), batch.action_mask
                )
            ),
        }

    def run(self, steps: int, seed: int) -> dict:
        """One block: reset, then `steps` steps. Per-step rows and the wall time between step
        ends."""
        self.reset(seed)
        rows, ends = [], [time.perf_counter()]
        for _ in range(steps):
            rows.append(self.step())
            ends.append(time.perf_counter())
        return {
            "rows": rows,
            "wall": [b - a for a, b in zip(ends, ends[1:])],
            "threads": self.threads,
        }


def serve_bare(overrides: list[str]) -> None:
    """The bare loop as a server: builds once, then answers `run STEPS SEED` lines on stdin with
    one `BENCH_OVERHEAD {json}` line on stdout; `quit` ends it."""
    from rlhf.train import resolve_model_path

    cfg, _ = compose(1, overrides)
    out = sys.stdout
    sys.stdout = sys.stderr  # vLLM's and anyone's prints stay off the reply channel
    loop = BareLoop(cfg, resolve_model_path(cfg))
    out.write(MARK + json.dumps({"ready": True, "threads": loop.threads}) + "\n")
    out.flush()
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        steps, seed = int(cmd[1]), int(cmd[2])
        out.write(MARK + json.dumps(loop.run(steps, seed)) + "\n")
        out.flush()


class BareClient:
    """Drives a `serve_bare` subprocess."""

    def __init__(self, overrides: list[str], threads: int = 0):
        """threads: OMP_NUM_THREADS for the bare process (0: unset, a plain process)."""
        self.log = tempfile.NamedTemporaryFile(
            "w+", prefix="bench-overhead-bare-", suffix=".log", delete=False
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve-bare", "--", *overrides],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={
                **os.environ,
                "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "VLLM_LOGGING_LEVEL": "WARNING",
                **({"OMP_NUM_THREADS": str(threads)} if threads else {}),
            },
        )
        self.ready = None

    def _reply(self, timeout_s: float) -> dict:
        watchdog = kill_after(self.proc, timeout_s)
        try:
            for line in self.proc.stdout:
                if line.startswith(MARK):
                    return json.loads(line[len(MARK) :])
        finally:
            watchdog.cancel()
        self.log.flush()
        tail = Path(self.log.name).read_text()[-3000:]
        raise RuntimeError(f"the bare loop exited (code {self.proc.wait()}):\n{tail}")

    def wait_ready(self, timeout_s: float = 300) -> dict:
        if self.ready is None:
            self.ready = self._reply(timeout_s)
        return self.ready

    def run(self, steps: int, seed: int, timeout_s: float = 300) -> dict:
        self.wait_ready()
        self.proc.stdin.write(f"run {steps} {seed}\n")
        self.proc.stdin.flush()
        return self._reply(timeout_s)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        os.unlink(self.log.name)


# --------------------------------------------------------------------------------------------
# ours: the Trainer that rlhf.train builds
# --------------------------------------------------------------------------------------------


class Ours:
    """One configuration's Trainer on its own local Ray cluster, started once."""

    def __init__(self, name: str, steps: int, overrides: list[str]):
        import ray

        from rlhf.data import PromptSource
        from rlhf.train import build_trainer, init_ray, resolve_model_path

        self.name = name
        self.cfg, self.resolved = compose(steps, [*CONFIGS[name], *overrides])
        self.out = Path(tempfile.mkdtemp(prefix=f"bench-overhead-{name}-"))
        model_path = resolve_model_path(self.cfg)
        runtime_env = init_ray(self.cfg)
        try:
            self.trainer = build_trainer(
                self.cfg,
                self.out / "startup",
                self.resolved,
                PromptSource(self.cfg.data, self.cfg.seed),
                model_path,
                runtime_env,
            )
            self.initial = str(self.out / "initial")
            ray.get(self.trainer.learners.save(self.initial, "init"))
        except BaseException:
            ray.shutdown()
            raise
        self.blocks = 0

    def run(self, seed: int, timeline: bool = False) -> dict:
        """One block: restart from the initial state, `trainer.total_steps` steps. timeline:
        also the actors' own time per call (Ray's profiling events), per method and step."""
        from rlhf import jsonl
        from rlhf.data import PromptSource
        from rlhf.metrics import RunLogger
        from rlhf.pipeline import RolloutPipeline

        cfg, t = self.cfg, self.trainer
        self.blocks += 1
        run_dir = self.out / f"block{self.blocks}"
        logger = RunLogger(
            cfg.logger,
            run_dir,
            config=self.resolved,
            total_steps=cfg.trainer.total_steps,
            name=run_dir.name,
            group=None,
            tags=[],
            primary_metric="reward/mean",
        )
        ends: list[float] = []
        log = logger.log

        def timed_log(step, metrics):  # a step ends when its row is logged
            log(step, metrics)
            ends.append(time.perf_counter())

        logger.log = timed_log
        t.restart(
            RolloutPipeline(
                cfg.rollout,
                PromptSource(cfg.data, seed),
                t.pipeline.engines,
                t.pipeline.rewards,
                seed=seed,
                ledger_path=run_dir / "ledger.jsonl",
            ),
            logger,
            self.initial,
        )
        ends.append(time.perf_counter())
        start_us = time.time() * 1e6
        t.fit()
        rows = jsonl.read(run_dir / jsonl.METRICS)
        out = {"rows": rows, "wall": [b - a for a, b in zip(ends, ends[1:])]}
        if timeline:
            import ray

            out["timeline"] = actor_time(ray.timeline(), start_us, len(rows))
        return out

    def close(self) -> None:
        import ray

        ray.shutdown()


def actor_time(events: list[dict], since_us: float, steps: int) -> dict[str, dict]:
    """Ray profiling events after `since_us`, by (event type, method): calls per step and the
    median and total-per-step milliseconds."""
    by: dict[str, list[float]] = {}
    for e in events:
        if e.get("ph") != "X" or e.get("ts", 0) < since_us:
            continue
        name = e.get("args", {}).get("name") or e.get("name")
        key = f"{e.get('cat')} {name}"
        by.setdefault(key, []).append(e.get("dur", 0) / 1e3)
    return {
        k: {
            "calls_per_step": len(v) / steps,
            "median_ms": statistics.median(v),
            "ms_per_step": sum(v) / steps,
        }
        for k, v in sorted(by.items())
    }


# --------------------------------------------------------------------------------------------
# the measurement
# --------------------------------------------------------------------------------------------


def summarize(block: dict, skip: int) -> dict:
    """Steady-state medians of one block: wall s/step and each phase."""
    rows = block["rows"]
    out = {
        "wall_s": steady(block["wall"], skip),
        "step_s": steady([r["timing/step_s"] for r in rows], skip),
    }
    for k in (*PHASES, "generate", "reward"):
        key = f"timing/{k}_s"
        if all(key in r for r in rows):
            out[k] = steady([r[key] for r in rows], skip)
    if all("perf/rollout_idle_frac" in r for r in rows):
        # Ours: the engine's generate-call time (the pipeline's busy share of the step).
        out["generate"] = steady(
            [(1 - r["perf/rollout_idle_frac"]) * r["timing/step_s"] for r in rows], skip
        )
    out["response_len_mean"] = statistics.mean(r["rollout/response_len_mean"] for r in rows)
    out["reward_mean"] = statistics.mean(r["reward/mean"] for r in rows)
    out["logprob_diff_max"] = max(r["rollout/logprob_diff"] for r in rows)
    return out


def measure(
    configs: list[str],
    steps: int,
    reps: int,
    skip: int = 3,
    seed: int = 0,
    overrides: list[str] = (),
    bare_threads: int = 0,
    timeline: bool = False,
    say=print,
) -> dict:
    """For each configuration: start ours once, then `reps` alternations of one block of ours
    and one block of the bare loop (which starts once, in parallel with the first cluster).
    timeline: in each configuration's last block of ours, also the actors' own time per call."""
    results: dict = {"steps": steps, "reps": reps, "skip": skip, "configs": {}}
    bare = BareClient(list(overrides), bare_threads)
    try:
        for name in configs:
            t = time.perf_counter()
            ours = Ours(name, steps, list(overrides))
            say(f"  overhead {name}: roles up in {time.perf_counter() - t:.1f}s")
            ready = bare.wait_ready()
            res = results["configs"][name] = {"ours": [], "bare": [], "overrides": CONFIGS[name]}
            try:
                for rep in range(reps):
                    block = ours.run(seed, timeline=timeline and rep == reps - 1)
                    if "timeline" in block:
                        res["timeline"] = block["timeline"]
                    o = summarize(block, skip)
                    b = summarize(bare.run(steps, seed), skip)
                    res["ours"].append(o)
                    res["bare"].append(b)
                    say(
                        f"  overhead {name} rep {rep + 1}: ours {o['wall_s']:.3f} s/step, "
                        f"bare {b['wall_s']:.3f} s/step ({o['wall_s'] / b['wall_s']:.2f}x)"
                    )
            finally:
                ours.close()
        results["bare_threads"] = ready.get("threads")
    finally:
        bare.close()
    return results


def median_of(blocks: list[dict], key: str) -> float | None:
    vals = [b[key] for b in blocks if key in b]
    return statistics.median(vals) if vals else None


def breakdown_table(results: dict) -> str:
    """Per-phase steady-state medians, ours and bare, per configuration."""
    keys = ["wall_s", "step_s", *PHASES, "generate", "reward"]
    lines = [
        "| config | side | " + " | ".join(keys) + " | resp len | reward |",
        "|---" * (len(keys) + 4) + "|",
    ]
    for name, res in results["configs"].items():
        for side in ("ours", "bare"):
            blocks = res[side]
            cells = [
                f"{median_of(blocks, k):.4f}" if median_of(blocks, k) is not None else "-"
                for k in keys
            ]
            lines.append(
                f"| {name} | {side} | "
                + " | ".join(cells)
                + f" | {median_of(blocks, 'response_len_mean'):.2f} "
                f"| {median_of(blocks, 'reward_mean'):.3f} |"
            )
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=20, help="steps per block")
    p.add_argument("--reps", type=int, default=2, help="blocks per side and configuration")
    p.add_argument("--skip", type=int, default=3, help="warm-up steps left out of each block")
    p.add_argument(
        "--configs", default="default,matched", help="comma-separated: " + ",".join(CONFIGS)
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--bare-threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS of the bare process (0: unset; 1: as a 1-CPU Ray actor)",
    )
    p.add_argument(
        "--timeline",
        action="store_true",
        help="also time each actor method inside the actor (Ray's profiling events)",
    )
    p.add_argument("--out", default="", help="write the results as JSON here")
    p.add_argument("--serve-bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides for both sides (after --)")
    args = p.parse_args(argv)
    if args.serve_bare:
        serve_bare(args.overrides)
        return {}
    configs = [c for c in args.configs.split(",") if c]
    results = measure(
        configs,
        args.steps,
        args.reps,
        args.skip,
        args.seed,
        args.overrides,
        args.bare_threads,
        args.timeline,
    )
    print(
        f"\n{args.steps} steps per block, first {args.skip} skipped, {args.reps} blocks per side; "
        f"s/step = median wall time between step ends, median over blocks\n"
    )
    for name, res in results["configs"].items():
        o = [b["wall_s"] for b in res["ours"]]
        b = [b["wall_s"] for b in res["bare"]]
        print(
            f"{name:8s} ours {statistics.median(o):.3f} ({min(o):.3f}-{max(o):.3f})  bare "
            f"{statistics.median(b):.3f} ({min(b):.3f}-{max(b):.3f})  ratio "
            f"{statistics.median(o) / statistics.median(b):.2f}x"
            f"{'  <- the issue ratio' if name == 'matched' else ''}"
        )
    print("\nper-phase steady-state medians (s):\n" + breakdown_table(results))
    for name, res in results["configs"].items():
        if "timeline" in res:
            print(
                f"\n{name}: time inside the actors per call (Ray profiling events; median ms,"
                f" calls per step; the block's warm-up steps included in the counts)"
            )
            for k, v in res["timeline"].items():
                if k.startswith("task::"):
                    print(
                        f"  {k.split()[0][6:]:40s} {v['median_ms']:8.1f} ms  "
                        f"x{v['calls_per_step']:.1f}"
                    )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
