"""scripts/bench_agents.py's parts that decide its numbers: the long-tailed turn counts and the
lock-step barrier (no engine: a fake generate whose turns take different times)."""

import asyncio
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
_spec = importlib.util.spec_from_file_location("bench_agents", ROOT / "scripts" / "bench_agents.py")
bench_agents = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_agents)


def test_turn_counts_are_seeded_long_tailed_and_in_range():
    turns = [bench_agents.draw_turns(s) for s in range(2000)]
    assert turns == [bench_agents.draw_turns(s) for s in range(2000)]
    assert set(turns) == set(range(1, 9))
    counts = [turns.count(n) for n in range(1, 9)]
    assert counts[0] > 0.4 * len(turns) and counts == sorted(counts, reverse=True)[:1] + counts[1:]
    assert counts[0] > counts[1] > counts[3] > counts[7] > 0


def _episodes(gen_for, turns, leave=None):
    async def episode(i):
        gen = gen_for()
        try:
            for _ in range(turns[i]):
                await gen([i], 0, 1, [])
        finally:
            if leave:
                await leave()

    return [episode(i) for i in range(len(turns))]


def test_lock_step_waits_for_the_slowest_turn_and_per_episode_does_not():
    turns = [2, 3, 3]

    async def run(lock_step):
        log, taken = [], [0, 0, 0]

        async def slow_generate(context, seed, max_tokens, stop_ids):
            i = context[0]
            t, taken[i] = taken[i], taken[i] + 1
            log.append(("start", i, t))
            await asyncio.sleep(0.05 if i == 0 else 0.001)  # episode 0's turns are slow
            log.append(("end", i, t))
            return [1], [0.0], context

        if lock_step:
            gate = bench_agents.LockStep(slow_generate, len(turns))
            coros = _episodes(gate.for_episode, turns, gate.leave)
        else:
            coros = _episodes(lambda: slow_generate, turns)
        await asyncio.gather(*coros)
        return log

    log = asyncio.run(run(lock_step=True))
    # No episode's turn t+1 is generated before every episode's turn t has its tokens.
    for i, t in [(0, 1), (1, 1), (2, 1), (1, 2), (2, 2)]:
        start = log.index(("start", i, t))
        assert all(log.index(("end", j, t - 1)) < start for j in range(3))
    # Episode 0 ends after 2 turns and leaves: the others' turn 2 does not wait for it.
    assert ("start", 0, 2) not in log and log[-1] in {("end", 1, 2), ("end", 2, 2)}
    free = asyncio.run(run(lock_step=False))
    # Per episode: the fast episodes finish all their turns before the slow one's first turn.
    assert free.index(("end", 1, 2)) < free.index(("end", 0, 0))
