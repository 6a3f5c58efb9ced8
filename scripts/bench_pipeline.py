"""The rollout pipeline's overlap: samples/s and seconds to a reward threshold at
`rollout.max_staleness` 0, 1 and 2, as ratios against 0 measured in the same run.

    python scripts/bench_pipeline.py [--tasks addition spell] [--staleness 0 1 2]
                                     [--seeds 0 1 2] [--steps 120] [-- extra Hydra overrides]

Placement: 1 vLLM engine (1 CPU) and 1 learner rank (1 CPU), so that generation and learning
can run on different cores of a 2-core machine. For each task the roles start once (Ray, the
engine, the learner, the reward actor); every (staleness, seed) run then restores the learner's
initial state (weights and optimizer), sends it to the engine, and trains a fresh pipeline with
its own prompt stream and sampling seeds, so start-up is not part of any number.

Per run:
- samples/s: trained samples / training wall time (the first 2 steps, warm-ups, left out);
- seconds to threshold: training wall time until the mean reward of the last 10 steps first
  reaches the task's threshold (addition 0.6, spell 0.5; never reached: the run's total, marked);
- the learner's and the engine's idle shares (perf/learner_idle_frac, perf/rollout_idle_frac).
Prints medians over seeds with the spread (min..max) and ratios against staleness 0 (> 1 is
better for samples/s, < 1 for seconds), and writes the table to
outputs/bench_pipeline/<time>/bench_pipeline.json with each run's metrics.jsonl and ledger.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

from common import ROOT, grpo

os.environ.setdefault("HF_HUB_OFFLINE", "1")

THRESHOLDS = {"addition": 0.6, "spell": 0.5}
MAX_NEW_TOKENS = {"addition": 8, "spell": 13}
WINDOW = 10
WARMUP_STEPS = 2


def compose(task: str, steps: int, extra: list[str]):
    """(validated config, resolved dict) of one task's runs: 1 learner rank, 1 engine, no
    evaluation, checkpoints, report or W&B."""
    return grpo(
        f"data.task={task}",
        f"trainer.total_steps={steps}",
        f"rollout.max_new_tokens={MAX_NEW_TOKENS[task]}",
        "learner.num_ranks=1",
        "rollout.num_workers=1",
        "ray.num_cpus=3",
        "logger.wandb.mode=disabled",
        "logger.console_every=1000",
        "trainer.report=false",
        "trainer.save_final=false",
        "trainer.save_every=0",
        "trainer.save_every_min=0",
        "eval.every=0",
        *extra,
    )


def run_summary(rows: list[dict], threshold: float) -> dict:
    timed = rows[WARMUP_STEPS:]
    train_s = sum(r["timing/step_s"] for r in timed)
    samples = sum(r["perf/samples_per_s"] * r["timing/step_s"] for r in timed)
    elapsed, hit = 0.0, None
    for i, r in enumerate(rows):
        elapsed += r["timing/step_s"]
        recent = [x["reward/mean"] for x in rows[max(0, i - WINDOW + 1) : i + 1]]
        if i + 1 >= WINDOW and sum(recent) / len(recent) >= threshold:
            hit = elapsed
            break
    return {
        "samples_per_s": samples / train_s,
        "seconds_to_threshold": hit if hit is not None else elapsed,
        "reached": hit is not None,
        "learner_idle_frac": statistics.mean(r["perf/learner_idle_frac"] for r in timed),
        "rollout_idle_frac": statistics.mean(r["perf/rollout_idle_frac"] for r in timed),
        "staleness_mean": statistics.mean(r["rollout/staleness_mean"] for r in rows),
        "reward_first_fifth": statistics.mean(r["reward/mean"] for r in rows[: len(rows) // 5]),
        "reward_last_fifth": statistics.mean(r["reward/mean"] for r in rows[-(len(rows) // 5) :]),
    }


def bench_task(task: str, args, out: Path) -> list[dict]:
    import ray

    from rlhf import jsonl
    from rlhf.data import PromptSource
    from rlhf.metrics import RunLogger
    from rlhf.pipeline import RolloutPipeline
    from rlhf.train import build_trainer, init_ray, resolve_model_path

    cfg, resolved = compose(task, args.steps, args.overrides)
    model_path = resolve_model_path(cfg)
    runtime_env = init_ray(cfg)
    results = []
    try:
        started = time.perf_counter()
        trainer = build_trainer(
            cfg,
            out / f"{task}-startup",
            resolved,
            PromptSource(cfg.data, 0),
            model_path,
            runtime_env,
        )
        print(f"[{task}] roles up in {time.perf_counter() - started:.1f}s", flush=True)
        initial = out / f"{task}-initial"
        ray.get(trainer.learners.save(str(initial), "init"))
        for k in args.staleness:
            for seed in args.seeds:
                run_dir = out / f"{task}-k{k}-s{seed}"
                run_dir.mkdir(parents=True)
                rcfg = dataclasses.replace(cfg.rollout, max_staleness=k)
                trainer.restart(
                    RolloutPipeline(
                        rcfg,
                        PromptSource(cfg.data, seed),
                        trainer.pipeline.engines,
                        trainer.pipeline.rewards,
                        seed=seed,
                        ledger_path=run_dir / "ledger.jsonl",
                    ),
                    RunLogger(
                        cfg.logger,
                        run_dir,
                        config=resolved,
                        total_steps=args.steps,
                        name=run_dir.name,
                        group=None,
                        tags=[],
                        primary_metric="reward/mean",
                    ),
                    str(initial),
                )
                trainer.fit()
                rows = jsonl.read(run_dir / jsonl.METRICS)
                summary = {
                    "task": task,
                    "staleness": k,
                    "seed": seed,
                    **run_summary(rows, THRESHOLDS[task]),
                }
                print(json.dumps(summary), flush=True)
                results.append(summary)
    finally:
        ray.shutdown()
    return results


def table(results: list[dict], staleness: list[int]) -> str:
    def med(vals):
        return statistics.median(vals), min(vals), max(vals)

    lines = [
        "| task | max_staleness | samples/s (min..max) | x vs 0 | s to threshold (min..max) "
        "| x vs 0 | learner idle | engine idle | reward first -> last fifth |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for task in dict.fromkeys(r["task"] for r in results):
        base = {}
        for k in staleness:
            runs = [r for r in results if r["task"] == task and r["staleness"] == k]
            sps, t = (
                med([r["samples_per_s"] for r in runs]),
                med([r["seconds_to_threshold"] for r in runs]),
            )
            base.setdefault("sps", sps[0])
            base.setdefault("t", t[0])
            missed = sum(not r["reached"] for r in runs)
            lines.append(
                f"| {task} (>= {THRESHOLDS[task]}) | {k} | "
                f"{sps[0]:.0f} ({sps[1]:.0f}..{sps[2]:.0f}) "
                f"| {sps[0] / base['sps']:.2f} | {t[0]:.1f} ({t[1]:.1f}..{t[2]:.1f})"
                f"{f' [{missed} not reached]' if missed else ''} | {t[0] / base['t']:.2f} "
                f"| {statistics.median(r['learner_idle_frac'] for r in runs):.2f} "
                f"| {statistics.median(r['rollout_idle_frac'] for r in runs):.2f} "
                f"| {statistics.median(r['reward_first_fifth'] for r in runs):.2f} -> "
                f"{statistics.median(r['reward_last_fifth'] for r in runs):.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--tasks", nargs="+", default=["addition", "spell"], choices=sorted(THRESHOLDS))
    ap.add_argument("--staleness", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = ap.parse_args()
    if args.staleness[0] != 0:
        ap.error("the first --staleness is the baseline and must be 0")
    out = ROOT / "outputs" / "bench_pipeline" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True)
    results = []
    for task in args.tasks:
        results += bench_task(task, args, out)
    text = table(results, args.staleness)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"\n{machine}; {args.steps} steps per run, seeds {args.seeds}; medians (min..max)\n")
    print(text)
    (out / "bench_pipeline.json").write_text(
        json.dumps(
            {"machine": machine, "args": vars(args), "runs": results, "table": text}, indent=1
        )
    )
    print(f"\nwritten: {out / 'bench_pipeline.json'}")


if __name__ == "__main__":
    main()
