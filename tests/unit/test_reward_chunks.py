"""The reward where it costs least: a built-in exact-match task reward is scored in the reward
actor's own process; user functions go to worker processes a chunk per call, and a fault in a
chunk still costs only the sample that caused it, each sample called exactly once."""

import dataclasses
import os
import random
import time

import pytest

from rlhf import tasks
from rlhf.batch import Sample
from rlhf.compose import compose
from rlhf.config import ConfigError, RewardConfig, validate
from rlhf.reward.actor import RewardActor
from rlhf.reward.inprocess import InProcessScorer
from rlhf.reward.pool import FunctionScorer


def _addition_samples(n: int, seed: int = 0) -> list[Sample]:
    rng = random.Random(seed)
    out = []
    for i, p in enumerate(tasks.get_task("addition").sample(rng, n)):
        response = p.answer if rng.random() < 0.5 else str(rng.randint(0, 12))
        out.append(Sample(group_id=i // 4, prompt=p.prompt, response=response, answer=p.answer))
    return out


def test_exact_match_tasks_score_in_process_and_the_others_in_workers():
    in_process = {name for name, t in tasks.TASKS.items() if t.reward_in_process}
    assert in_process == {
        "addition",
        "addition9",
        "reverse",
        "spell",
        "agent_calculator",
        "agent_guess",
    }
    actor = RewardActor(RewardConfig(fn="task"), "addition")
    assert isinstance(actor.terms[0].scorer, InProcessScorer)
    # fractions scores with math-verify, which needs a process's main thread: a worker
    fractions = RewardActor(RewardConfig(fn="task"), "fractions")
    assert isinstance(fractions.terms[0].scorer, FunctionScorer)
    fractions.close()


def test_in_process_scores_equal_the_worker_scores():
    samples = _addition_samples(64)
    in_process = RewardActor(RewardConfig(fn="task"), "addition")
    pool = FunctionScorer("task", "addition", timeout_s=5.0, workers=2, chunk_size=1)
    try:
        expected = [v for v, _ in pool.score(samples)]
    finally:
        pool.close()
    got = in_process.score([dataclasses.replace(s, info={}) for s in samples])
    assert [s.reward for s in got] == expected
    assert not any("reward_error" in s.info for s in got)
    assert 0 < sum(expected) < len(expected)


def test_a_raising_built_in_reward_costs_its_sample_only(monkeypatch):
    def fragile(completion: str, answer: str) -> float:
        if completion == "boom":
            raise ZeroDivisionError("bad rule")
        return tasks.exact_match(completion, answer)

    monkeypatch.setitem(
        tasks.TASKS, "addition", dataclasses.replace(tasks.TASKS["addition"], reward=fragile)
    )
    actor = RewardActor(RewardConfig(fn="task", fallback=-1.0), "addition")
    assert isinstance(actor.terms[0].scorer, InProcessScorer)
    out = actor.score(
        [
            Sample(group_id=0, prompt="1+2=", response="3", answer="3"),
            Sample(group_id=0, prompt="1+2=", response="boom", answer="3"),
            Sample(group_id=0, prompt="1+2=", response="4", answer="3"),
        ]
    )
    assert [s.reward for s in out] == [1.0, -1.0, 0.0]
    assert out[1].info["reward_error"] == "exception: ZeroDivisionError: bad rule"
    assert "reward_error" not in out[0].info and "reward_error" not in out[2].info


def _count_calls(scorer: FunctionScorer) -> list[int]:
    sizes: list[int] = []
    schedule = scorer.pool.schedule

    def spy(fn, args, timeout):
        sizes.append(len(args[2]))
        return schedule(fn, args=args, timeout=timeout)

    scorer.pool.schedule = spy
    return sizes


@pytest.mark.parametrize("chunk_size, expected", [(1, [1] * 16), (4, [4] * 4), (32, [8, 8])])
def test_one_process_round_trip_serves_a_chunk(chunk_size, expected):
    scorer = FunctionScorer("reward_fns:misbehave", "addition", 5.0, 2, chunk_size)
    sizes = _count_calls(scorer)
    samples = [Sample(group_id=0, prompt="ok", response=str(i % 3), answer="1") for i in range(16)]
    try:
        out = scorer.score(samples)
    finally:
        scorer.close()
    assert out == [(float(i % 3 == 1), None) for i in range(16)]
    # chunks are at most chunk_size and at most ceil(16 / workers), so both workers get work
    assert sorted(sizes) == sorted(expected)


def test_faults_inside_a_chunk_cost_only_their_sample_and_each_sample_runs_once(
    tmp_path, monkeypatch
):
    log = tmp_path / "calls.log"
    monkeypatch.setenv("RLHF_TEST_REWARD_PIDS", str(log))
    prompts = ["ok"] * 24
    prompts[3], prompts[5], prompts[14], prompts[20] = "hang", "exit", "raise", "hang"
    scorer = FunctionScorer("reward_fns:misbehave", "addition", 0.5, 2, 32)
    sizes = _count_calls(scorer)
    samples = [Sample(group_id=0, prompt=p, response="1", answer="1") for p in prompts]
    t0 = time.monotonic()
    try:
        out = scorer.score(samples)
    finally:
        scorer.close()
    elapsed = time.monotonic() - t0
    errors = [e for _, e in out]
    assert errors[3] == errors[20] == "timeout"
    assert errors[5] == "crash: worker exited with code 3"
    assert errors[14] == "exception: ValueError: nope"
    others = [i for i in range(24) if i not in (3, 5, 14, 20)]
    assert [out[i] for i in others] == [(1.0, None)] * len(others)
    # every sample was called exactly once: the chunk's unstarted rest went to a new chunk
    called = [line.split()[1] for line in log.read_text().splitlines()]
    assert sorted(called) == sorted(prompts)
    # two chunks of 12 at first (one hang in each, in parallel), then the rests: about one
    # timeout in all, not one per chunk sample
    assert sizes[:2] == [12, 12] and len(sizes) == 2 + 3
    assert elapsed < 0.5 + 1.5, elapsed


def test_chunk_size_is_checked():
    cfg = compose("+experiment=grpo", "reward.chunk_size=0", check=False)[0]
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == "reward.chunk_size"
    assert validate(compose("+experiment=grpo", check=False)[0]).reward.chunk_size == 32


def test_a_new_scorer_removes_the_progress_folders_of_dead_owners(tmp_path):
    """A SIGKILLed reward actor leaves its progress folder behind; the next one (Ray's restart,
    or the next run) removes it, and leaves a live process's folder alone."""
    import subprocess

    from rlhf.reward.pool import PROGRESS_PREFIX, progress_dir

    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f"{PROGRESS_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{PROGRESS_PREFIX}{os.getppid()}-def"
    other = tmp_path / f"{PROGRESS_PREFIX}notapid"
    for d in (left, live, other):
        (d / "sub").mkdir(parents=True)
    mine = progress_dir(str(tmp_path))
    assert not left.exists()
    assert live.exists() and other.exists()
    assert os.path.basename(mine).startswith(f"{PROGRESS_PREFIX}{os.getpid()}-")


def test_a_broken_pool_charges_no_sample_and_rescores_the_chunk():
    """A worker killed while idle makes pebble fail every queued chunk with BrokenProcessPool
    when the death is noticed before the chunks reach a worker (a race seen in the suite): the
    chunk's samples are re-queued, none charged; only pools that keep breaking charge them."""
    import concurrent.futures
    from concurrent.futures.process import BrokenProcessPool

    from rlhf.reward.pool import MAX_POOL_BREAKS

    scorer = FunctionScorer("task", "addition", timeout_s=5.0, workers=2)
    try:
        out = [(None, "crash: not scored")] * 3
        scorer._broken_pools = []

        def broken_chunk():
            future = concurrent.futures.Future()
            future.set_exception(BrokenProcessPool("All workers expired"))
            path = os.path.join(scorer._dir, "broken.rec")
            open(path, "wb").close()
            return future, [0, 1, 2], path

        for _ in range(2):  # one pool breaking fails each of its chunks: counted once
            assert scorer._collect(*broken_chunk(), out) == [0, 1, 2]
        assert out == [(None, "crash: not scored")] * 3
        for _ in range(MAX_POOL_BREAKS - 1):
            scorer.pool = object()  # stands for the fresh pool that broke again
            assert scorer._collect(*broken_chunk(), out) == [0, 1, 2]
        scorer.pool = object()
        assert scorer._collect(*broken_chunk(), out) == [1, 2]
        assert out[0] == (None, "exception: BrokenProcessPool: All workers expired")
    finally:
        scorer.pool = scorer._new_pool()
        scorer.close()
