"""CartPole-v1 PPO: this framework against Stable-Baselines3, measured in the same run.

    python scripts/bench_cartpole.py [--seeds 0 1 2] [--target 475] [-- extra Hydra overrides]

Both sides measure the same thing: the mean return of the last 20 finished episodes, checked
once per rollout (256 env steps for both), and the wall-clock seconds and env steps until it
first reaches --target.

- SB3: PPO with the rl-zoo hyperparameters for CartPole-v1 (8 envs, n_steps 32, batch 256,
  gae_lambda 0.8, gamma 0.98, 20 epochs, ent_coef 0, linear lr 1e-3 and clip 0.2 over 1e5
  steps), one process (DummyVecEnv), in a fresh interpreter. `total` counts from interpreter
  start (imports included); `from first step` from the start of `learn`.
- ours: `python -m rlhf.train +experiment=cartpole_ppo` in a subprocess (Ray, the env runner
  actor, the DeepSpeed learner, the weight broadcast, the Trainer), W&B disabled on both sides.
  `total` counts from launching the command (Ray start, actor start-up and DeepSpeed init
  included); `from first step` from the start of trainer step 1. Step times come from watching
  metrics.jsonl grow.

Runs alternate (SB3, ours, SB3, ours, ...) so that load from anything else on the machine hits
both alike. Prints per-run rows, then medians and the ratio ours / SB3 (< 1: ours is faster).
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

from common import ROOT, MetricsTail, interrupt, launch_train

WINDOW = 20


# --------------------------------------------------------------------------------------------
# SB3 (runs in a child interpreter: `bench_cartpole.py --sb3-child SEED TARGET`)
# --------------------------------------------------------------------------------------------


def sb3_child(seed: int, target: float, t_start: float) -> dict:
    import numpy as np
    import torch

    # One thread, like our learner (Ray gives a 1-CPU actor OMP_NUM_THREADS=1): on 2 shared
    # cores, two OpenMP threads for 64-unit layers only spin against each other.
    torch.set_num_threads(int(os.environ.get("SB3_THREADS", "1")))
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.utils import LinearSchedule

    class Until(BaseCallback):
        """Checks after each rollout (as ours does after each trainer step) whether the
        last-20-episode mean reached `target`; then stops learn() right after that rollout's
        update, and the clock stops there (ours stops once that step's metrics are written)."""

        def __init__(self):
            super().__init__()
            self.hit_steps = None
            self.hit_time = None

        def _on_rollout_end(self) -> None:
            buf = self.model.ep_info_buffer  # maxlen = stats_window_size = 20
            if self.hit_steps is None and buf and np.mean([e["r"] for e in buf]) >= target:
                self.hit_steps = self.model.num_timesteps

        def _on_step(self) -> bool:  # the first call after the update of the hit rollout
            if self.hit_steps is not None:
                self.hit_time = time.time()
                return False
            return True

    env = make_vec_env("CartPole-v1", n_envs=8, seed=seed)
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=32,
        batch_size=256,
        gae_lambda=0.8,
        gamma=0.98,
        n_epochs=20,
        ent_coef=0.0,
        learning_rate=LinearSchedule(1e-3, 0.0, 1.0),
        clip_range=LinearSchedule(0.2, 0.0, 1.0),
        stats_window_size=WINDOW,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    cb = Until()
    first = time.time()
    model.learn(total_timesteps=100_000, callback=cb)
    reached = cb.hit_steps is not None
    steps = cb.hit_steps if reached else model.num_timesteps
    end = cb.hit_time if reached else time.time()
    return {
        "reached": reached,
        "steps": steps,
        "total_s": end - t_start,
        "from_first_step_s": end - first,
        "steps_per_s": steps / (end - first),
    }


def run_sb3(seed: int, target: float) -> dict:
    t0 = time.time()
    out = subprocess.run(
        [sys.executable, __file__, "--sb3-child", str(seed), str(target), str(t0)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:
        raise RuntimeError(f"SB3 run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------


def run_ours(seed: int, target: float, overrides: list[str]) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix="bench-cartpole-"))
    metrics = run_dir / "metrics.jsonl"
    t0 = time.time()
    proc = launch_train(
        ["+experiment=cartpole_ppo", f"seed={seed}", *overrides],
        run_dir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[tuple[dict, float]] = []  # (row, wall time it appeared)
    hit = None
    tail = MetricsTail(metrics)
    try:
        while True:
            alive = proc.poll() is None
            for row, now in tail.new_rows():
                seen.append((row, now))
                ret = row.get("env/episode_return_mean")
                if hit is None and ret is not None and ret >= target:
                    hit = (row, now)
            if hit is not None or not alive:
                break
            time.sleep(0.01)
    finally:
        interrupt(proc, 30)
    if not seen:
        raise RuntimeError(f"our run wrote no metrics:\n{proc.stderr.read()[-3000:]}")
    first_row, first_seen = seen[0]
    first_start = first_seen - first_row["timing/step_s"]
    row, end = hit if hit is not None else seen[-1]
    steps = int(row["env/steps"])
    return {
        "reached": hit is not None,
        "steps": steps,
        "total_s": end - t0,
        "from_first_step_s": end - first_start,
        "steps_per_s": steps / (end - first_start),
        "startup_s": first_start - t0,
    }


# --------------------------------------------------------------------------------------------


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--sb3-child":
        seed, target, t0 = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
        print(json.dumps(sb3_child(seed, target, t0)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--target", type=float, default=475.0)
    p.add_argument("overrides", nargs="*", help="Hydra overrides for our run")
    args = p.parse_args()

    results: dict[str, list[dict]] = {"sb3": [], "ours": []}
    print(
        f"{'run':<6}{'seed':>5}{'reached':>9}{'env steps':>11}{'total s':>9}"
        f"{'from 1st step s':>17}{'steps/s':>9}"
    )
    for seed in args.seeds:
        for name, fn in (
            ("sb3", lambda seed=seed: run_sb3(seed, args.target)),
            ("ours", lambda seed=seed: run_ours(seed, args.target, args.overrides)),
        ):
            r = fn()
            results[name].append(r)
            print(
                f"{name:<6}{seed:>5}{str(r['reached']):>9}{r['steps']:>11}{r['total_s']:>9.1f}"
                f"{r['from_first_step_s']:>17.1f}{r['steps_per_s']:>9.0f}",
                flush=True,
            )

    def med(name, key):
        return statistics.median(r[key] for r in results[name])

    print(
        f"\nmedians over seeds {args.seeds} (target: last-{WINDOW}-episode mean >= {args.target:g})"
    )
    for key, label in (
        ("total_s", "seconds to target, total"),
        ("from_first_step_s", "seconds to target, from first step"),
        ("steps", "env steps to target"),
        ("steps_per_s", "env steps/s"),
    ):
        s, o = med("sb3", key), med("ours", key)
        print(f"  {label:<38} SB3 {s:>9.1f}   ours {o:>9.1f}   ours/SB3 {o / s:.2f}")
    print(f"  our start-up (launch to first step): median {med('ours', 'startup_s'):.1f} s")
    missed = {n: sum(not r["reached"] for r in rs) for n, rs in results.items()}
    if any(missed.values()):
        print(f"  runs that never reached the target (timed to the end of the run): {missed}")


if __name__ == "__main__":
    main()
