"""The reward where it costs least (make bench's reward row): seconds for one RewardActor.score
call on N default-task samples (addition, half of the responses right), ours against the old
path, both measured alternately in this process (no Ray: the actor's own work only).

    python scripts/bench_reward.py [--n 128,1024] [--reps 5]

Cases (each ours / baseline):
- task: `reward.fn=task` scored in the actor's process (rlhf/reward/inprocess.py) / the same
  reward in a pebble worker, one process round trip per sample (rlhf/reward/pool.py with
  chunk_size=1: the path every built-in took before);
- user fn: a user function (`rlhf.reward.rules:exact_match`, the same rule by dotted path) in
  worker processes with the default `reward.chunk_size` / with chunk_size=1 (one round trip
  per sample, the old path).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time

from rlhf.batch import Sample
from rlhf.config import RewardConfig
from rlhf.reward.actor import RewardActor
from rlhf.reward.pool import FunctionScorer
from rlhf.tasks import get_task

TASK = "addition"
USER_FN = "rlhf.reward.rules:exact_match"


def samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(get_task(TASK).sample(rng, n)):
        response = p.answer if i % 2 else str(rng.randint(0, 12))
        out.append(Sample(group_id=i // 8, prompt=p.prompt, response=response, answer=p.answer))
    return out


def actors() -> dict[str, tuple[RewardActor, RewardActor]]:
    """case -> (ours, baseline), each a RewardActor as the reward group builds it; the task
    baseline gets the old per-sample worker scorer in place of the in-process one."""
    cfg = RewardConfig()
    task_old = RewardActor(cfg, TASK)
    task_old.terms[0].scorer = FunctionScorer("task", TASK, cfg.timeout_s, cfg.workers, 1)
    return {
        "task": (RewardActor(cfg, TASK), task_old),
        "user fn": (
            RewardActor(dataclasses.replace(cfg, fn=USER_FN), TASK),
            RewardActor(dataclasses.replace(cfg, fn=USER_FN, chunk_size=1), TASK),
        ),
    }


def _time(actor: RewardActor, batch: list[Sample]) -> float:
    fresh = [dataclasses.replace(s, info={}) for s in batch]
    t0 = time.perf_counter()
    actor.score(fresh)
    return time.perf_counter() - t0


def measure(ns: list[int], reps: int) -> list[dict]:
    """One dict per (case, n): ours/baseline seconds per call over `reps` alternating reps."""
    built = actors()
    rows = []
    try:
        for case, (ours, base) in built.items():
            for n in ns:
                batch = samples(n)
                # both paths give the same rewards
                assert [s.reward for s in ours.score(list(batch))] == [
                    s.reward for s in base.score([dataclasses.replace(s) for s in batch])
                ]
                row = {"case": case, "n": n, "ours": [], "baseline": []}
                for _ in range(reps):
                    row["ours"].append(_time(ours, batch))
                    row["baseline"].append(_time(base, batch))
                row["ratio"] = statistics.median(row["ours"]) / statistics.median(row["baseline"])
                rows.append(row)
    finally:
        for pair in built.values():
            for actor in pair:
                actor.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", default="128,1024", help="comma-separated batch sizes")
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    rows = measure([int(x) for x in args.n.split(",")], args.reps)
    print(f"{'case':8} {'n':>5} {'ours ms':>9} {'old ms':>9} {'ratio':>7}")
    for r in rows:
        ours, base = statistics.median(r["ours"]) * 1e3, statistics.median(r["baseline"]) * 1e3
        print(f"{r['case']:8} {r['n']:>5} {ours:9.2f} {base:9.2f} {r['ratio']:7.3f}x")


if __name__ == "__main__":
    main()
