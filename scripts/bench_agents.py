"""Per-episode scheduling of agent episodes against a turn-lock-step loop: samples/s of each on
the same engine, model and episodes, and their ratio, measured in the same run.

    python scripts/bench_agents.py [--episodes 128] [--windows 0 16] [--reps 5] [--seed 0]
                                   [--out FILE]

Episodes: a synthetic environment (`LongTail`) whose number of model turns is drawn per
episode, seeded, from a long-tailed distribution on 1..8 (P(n) proportional to n^-1.5: most
episodes take one or two turns, a few take eight). It replies with a tool result (`[t]` in the
tiny model's format) after each turn; the prompts are the calculator task's (`47+85=`), played
by the agent_tool tiny model (its warmed-up format: a tool call, then an answer), so the
model's turns vary in length as in a real run.

- ours: the engine's agent loop (rlhf/rollout/vllm_engine.py `_AgentEngine`: vLLM's AsyncLLM,
  rlhf/rollout/agent_loop.run_episode): every episode its own coroutine, advancing as its own
  turns finish; the engine batches whatever turns are ready. At most `window` episodes in
  flight, the next starting when one ends.
- baseline: turn lock-step, the same run_episode code behind a barrier, in batches of `window`
  episodes: every episode's turn t is submitted together, and no episode starts turn t+1
  before the slowest turn t of its batch has finished (an episode that ended leaves the
  barrier); the next batch starts when the whole batch has ended.
Window 0 = all episodes at once: what one engine call of a run does today (one call's episodes
all start together; the actor runs one call at a time), so only the turns' different lengths
separate the two. Window 16: a stream of episodes through 16 slots, where lock-step also leaves
the slots of finished episodes idle until its batch's longest episode ends.
Both run each repetition on the same episodes (prompts, seeds, turn counts; the script reports
whether both sample the same tokens); the order of the two alternates between repetitions.
samples/s = episodes / wall seconds. Prints the medians, spread and ratio per window
(target >= 1.3x) and writes JSON (--out, default outputs/bench/bench_agents-<time>.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import time
from collections import defaultdict
from pathlib import Path

from common import ROOT

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MAX_TURNS = 8
TAIL = 1.5  # P(n turns) ~ n^-TAIL on 1..MAX_TURNS
TARGET = 1.3


def turn_weights() -> list[float]:
    return [n**-TAIL for n in range(1, MAX_TURNS + 1)]


def draw_turns(seed: int) -> int:
    """The episode's number of model turns, a pure function of its seed."""
    return random.Random(f"bench-agents:{seed}").choices(
        range(1, MAX_TURNS + 1), weights=turn_weights()
    )[0]


class LongTail:
    """A text environment that takes `draw_turns(seed)` model turns, replying a tool result."""

    def reset(self, task, seed):
        self.t, self.turns = 0, draw_turns(seed)
        return [{"role": "user", "content": task["prompt"]}], {}

    def step(self, action):
        self.t += 1
        done = self.t >= self.turns
        return [{"role": "tool", "content": str(self.t)}], float(done), done, False, {}

    def close(self):
        pass


class LockStep:
    """A barrier around `generate`: an episode's turn t starts once every episode still running
    has arrived at turn t, and returns once every episode that took part in turn t has its
    tokens (the batch's slowest turn)."""

    def __init__(self, generate, episodes: int):
        self.generate, self.active = generate, episodes
        self.cond = asyncio.Condition()
        self.arrived: dict[int, int] = defaultdict(int)
        self.released: dict[int, int] = {}  # turn -> how many took part
        self.finished: dict[int, int] = defaultdict(int)

    def for_episode(self):
        turn = 0

        async def generate(context, seed, max_tokens, stop_ids):
            nonlocal turn
            t, turn = turn, turn + 1
            async with self.cond:
                self.arrived[t] += 1
                self.cond.notify_all()
                await self.cond.wait_for(
                    lambda: t in self.released or self.arrived[t] >= self.active
                )
                self.released.setdefault(t, self.arrived[t])
                self.cond.notify_all()
            out = await self.generate(context, seed, max_tokens, stop_ids)
            async with self.cond:
                self.finished[t] += 1
                self.cond.notify_all()
                await self.cond.wait_for(lambda: self.finished[t] >= self.released[t])
            return out

        return generate

    async def leave(self):
        async with self.cond:
            self.active -= 1
            self.cond.notify_all()


def build_engine(seed: int):
    """The agent_tool run's engine (its tiny model, rollout and env limits), in this process."""
    from rlhf.compose import compose
    from rlhf.rollout.vllm_engine import VllmEngine
    from rlhf.train import resolve_model_path

    cfg, _ = compose(
        "+experiment=agent_tool",
        f"env.max_turns={MAX_TURNS}",
        "env.max_tokens_per_turn=16",
        f"seed={seed}",
    )
    path = resolve_model_path(cfg)
    engine = VllmEngine(cfg.rollout, path, cfg.model.dtype, seed, 0, env=cfg.env)
    return cfg, engine.agents


def requests(n: int, seed: int):
    from rlhf.batch import GenerationRequest
    from rlhf.tasks import get_task

    problems = get_task("agent_calculator").sample(random.Random(seed), n)
    return [
        GenerationRequest(
            prompt_id=i, sample_index=0, seed=seed * 100_003 + i, prompt=p.prompt, answer=p.answer
        )
        for i, p in enumerate(problems)
    ]


async def _per_episode(agents, reqs, window: int):
    """Our agent loop: every episode its own coroutine; at most `window` in flight, a new one
    starting as soon as one ends (window = all: one engine call's episodes)."""
    from rlhf.rollout.agent_loop import ThreadEnv, run_episode

    slots = asyncio.Semaphore(window)

    async def one(r):
        async with slots:
            env = ThreadEnv(LongTail, agents.pool, 5.0)
            return await run_episode(agents.generate, env, agents.renderer, r, agents.limits)

    return await asyncio.gather(*(one(r) for r in reqs))


async def _lock_step(agents, reqs, window: int):
    """Turn lock-step in batches of `window` episodes, one batch after the other."""
    from rlhf.rollout.agent_loop import ThreadEnv, run_episode

    out = []
    for start in range(0, len(reqs), window):
        batch = reqs[start : start + window]
        gate = LockStep(agents.generate, len(batch))

        async def one(r, gate=gate):
            try:
                env = ThreadEnv(LongTail, agents.pool, 5.0)
                return await run_episode(gate.for_episode(), env, agents.renderer, r, agents.limits)
            finally:
                await gate.leave()

        out += await asyncio.gather(*(one(r) for r in batch))
    return out


def timed(agents, mode, reqs, window) -> tuple[float, list]:
    t = time.perf_counter()
    run = _per_episode if mode == "per_episode" else _lock_step
    samples = agents.call(run(agents, reqs, window))
    return time.perf_counter() - t, samples


def measure(agents, reqs, window: int, reps: int) -> dict:
    """Both modes `reps` times on the same episodes, alternating which goes first."""
    results: dict[str, list[float]] = {"per_episode": [], "lock_step": []}
    same_tokens = []
    for rep in range(reps):
        order = ["per_episode", "lock_step"] if rep % 2 == 0 else ["lock_step", "per_episode"]
        got = {}
        for mode in order:
            seconds, samples = timed(agents, mode, reqs, window)
            got[mode] = samples
            results[mode].append(len(reqs) / seconds)
            print(
                f"  window {window:4d} rep {rep} {mode:11s} {seconds:6.2f} s  "
                f"{len(reqs) / seconds:7.2f} samples/s  "
                f"turns {sum(s.info['turns'] for s in samples)}"
                f" (env errors {sum(bool(s.info['env_error']) for s in samples)})",
                flush=True,
            )
        pairs = zip(got["per_episode"], got["lock_step"])
        same_tokens.append(sum(a.response_ids == b.response_ids for a, b in pairs) / len(reqs))
    ours = statistics.median(results["per_episode"])
    base = statistics.median(results["lock_step"])
    print(
        f"window {window}: per-episode {ours:.1f} samples/s "
        f"({min(results['per_episode']):.1f}..{max(results['per_episode']):.1f}), lock-step "
        f"{base:.1f} ({min(results['lock_step']):.1f}..{max(results['lock_step']):.1f}): "
        f"ratio {ours / base:.2f}x (target >= {TARGET}x); identical tokens in both modes "
        f"{statistics.mean(same_tokens):.0%}",
        flush=True,
    )
    return {
        "window": window,
        "samples_per_s": results,
        "ratio": ours / base,
        "same_tokens_frac": same_tokens,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=128)
    p.add_argument(
        "--windows",
        type=int,
        nargs="+",
        default=[0, 16],
        help="episodes in flight (lock-step: per batch); 0 = all of them at once",
    )
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    cfg, agents = build_engine(args.seed)
    reqs = requests(args.episodes, args.seed)
    turns = [draw_turns(r.seed) for r in reqs]
    print(
        f"{len(reqs)} episodes, turns 1..{MAX_TURNS} ~ n^-{TAIL}: mean {statistics.mean(turns):.2f}"
        f", max {max(turns)}, histogram {[turns.count(n) for n in range(1, MAX_TURNS + 1)]}",
        flush=True,
    )
    timed(agents, "per_episode", reqs[:16], 16)  # warm the engine up (first-request costs)
    cases = [measure(agents, reqs, w or len(reqs), args.reps) for w in args.windows]
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": vars(args),
        "turns": turns,
        "cases": cases,
        # the headline: the first window (default: all episodes at once, one engine call)
        "samples_per_s": cases[0]["samples_per_s"],
        "ratio": cases[0]["ratio"],
        "target": TARGET,
    }
    path = (
        Path(args.out)
        if args.out
        else ROOT / "outputs" / "bench" / f"bench_agents-{time.strftime('%Y%m%d-%H%M%S')}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"JSON: {path}")
    return out


if __name__ == "__main__":
    main()
