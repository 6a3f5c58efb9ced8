"""The rollout pipeline's bookkeeping, on a real local Ray cluster with stand-in engines.

The unit under test is rlhf/pipeline.py: the staleness bound, dynamic sampling, the ledger and
determinism whatever order the calls finish in. The engines and reward actors here are small Ray
actors whose "responses" are a function of each request's seed and whose calls take random
time, so completions interleave differently from run to run. The real engines are exercised by
tests/integration/test_pipeline_real.py.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest
import ray

from rlhf.batch import Sample
from rlhf.config import DataConfig, RolloutConfig
from rlhf.data import PromptSource
from rlhf.ledger import read_ledger
from rlhf.pipeline import RolloutPipeline, all_equal


class FakeEngine:
    def __init__(self, index: int):
        self.index, self.version = index, 0
        self.rng = random.Random(index)

    def reset(self, delay_seed: int, episodes: bool = False) -> None:
        self.version, self.episodes = 0, episodes
        self.rng = random.Random(delay_seed * 10 + self.index)

    def generate(self, requests):
        time.sleep(self.rng.uniform(0.0, 0.02))
        if self.episodes:
            return [self._episode(r) for r in requests]
        return [
            Sample(
                group_id=r.prompt_id,
                prompt_ids=[1, 2],
                response_ids=[4 + r.seed % 5],
                rollout_logprobs=[-1.0],
                prompt=r.prompt,
                response=str(r.seed % 5),
                answer=r.answer,
                weight_version=self.version,
                info={"sample_index": r.sample_index, "engine": self.index, "engine_call_s": 0.01},
            )
            for r in requests
        ]

    def _episode(self, r):
        """Two turns, as if a weight sync had landed between them in sample 0 of each group
        (its first turn one version older); return = seed parity, all 1.0 for ids % 3 == 0."""
        turn_versions = [max(self.version - (r.sample_index == 0), 0), self.version]
        ret = 1.0 if r.prompt_id % 3 == 0 else float(r.seed % 2)
        return Sample(
            group_id=r.prompt_id,
            prompt_ids=[1, 2],
            response_ids=[4 + r.seed % 5, 9, 5],
            rollout_logprobs=[-1.0, 0.0, -1.0],
            response_mask=[1, 0, 1],
            turn_rewards=[(0, 0.0), (2, ret)],
            weight_version=min(turn_versions),  # the engine's rule (agent_loop.episode_version)
            info={
                "sample_index": r.sample_index,
                "engine_call_s": 0.01,
                "turns": 2,
                "turn_versions": turn_versions,
                "env_return": ret,
            },
        )

    def receive_weights(self, version: int) -> int:
        self.version = version
        return version


class FakeRewardActor:
    """Reward = response digit parity, except prompts whose id is a multiple of `equal_every`
    (all samples get 1.0: an all-equal group)."""

    def __init__(self):
        self.reset(0, 0)

    def reset(self, equal_every: int, delay_seed: int) -> None:
        self.equal_every = equal_every
        self.rng = random.Random(delay_seed)

    def score(self, samples):
        time.sleep(self.rng.uniform(0.0, 0.01))
        for s in samples:
            equal = self.equal_every and s.group_id % self.equal_every == 0
            s.reward = 1.0 if equal else float(int(s.response) % 2)
        return samples


class FakeRewards:
    def __init__(self, actors, equal_every: int, delay_seed: int):
        self.actors = actors
        ray.get([a.reset.remote(equal_every, delay_seed + i) for i, a in enumerate(actors)])

    def score(self, samples):
        half = len(samples) // 2
        parts = [samples[:half], samples[half:]]
        return [a.score.remote(p) for a, p in zip(self.actors, parts) if p]

    def state(self):  # no scorer state: RewardGroup's refs of RewardActor.state()
        return []

    def load_state(self, states):
        return []


@pytest.fixture(scope="module")
def ray_cluster():
    if ray.is_initialized():  # another test module's Ray (auto-initialised by a .remote call)
        ray.shutdown()
    # The stand-in actors live in this file: let Ray's workers import it.
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": str(Path(__file__).parent)}},
    )
    # One set of stand-in actors for the module (reset per pipeline): starting actor processes
    # is what costs time here.
    ACTORS["engines"] = [ray.remote(FakeEngine).remote(i) for i in range(6)]
    ACTORS["rewards"] = [ray.remote(FakeRewardActor).remote() for _ in range(2)]
    yield
    ray.shutdown()


ACTORS: dict[str, list] = {}
_next_engine = [0]


def make_pipeline(
    tmp_path,
    *,
    staleness=0,
    filter_groups=False,
    max_rounds=3,
    equal_every=0,
    delay_seed=0,
    engines=2,
    seed=0,
    name="ledger.jsonl",
    episodes=False,
):
    """A pipeline on `engines` stand-in engines not used by the previous pipeline (two
    pipelines of one test run side by side)."""
    cfg = RolloutConfig(
        prompts_per_step=6,
        samples_per_prompt=4,
        max_staleness=staleness,
        filter_groups=filter_groups,
        max_filter_rounds=max_rounds,
        prompts_per_call=2,
    )
    pool = ACTORS["engines"]
    start = _next_engine[0] if _next_engine[0] + engines <= len(pool) else 0
    workers = pool[start : start + engines]
    _next_engine[0] = start + engines
    ray.get([w.reset.remote(delay_seed, episodes) for w in workers])
    pipeline = RolloutPipeline(
        cfg,
        PromptSource(DataConfig(), seed),
        workers,
        FakeRewards(ACTORS["rewards"], equal_every, delay_seed),
        seed=seed,
        ledger_path=tmp_path / name,
        score_episodes=not episodes,
    )
    return pipeline, workers


def run_steps(pipeline, workers, steps, start_version=0):
    """Drive the pipeline like the trainer: batch, then a weight sync (version + 1)."""
    batches, version = [], start_version
    for step in range(start_version + 1, start_version + steps + 1):
        samples, metrics = pipeline.next_batch(step, version)
        batches.append((samples, metrics, version))
        version += 1
        ray.get([w.receive_weights.remote(version) for w in workers])
    return batches


def fingerprint(samples):
    return [(s.group_id, s.info["sample_index"], tuple(s.response_ids), s.reward) for s in samples]


@pytest.mark.parametrize("staleness", [0, 1, 2])
def test_staleness_bound_and_ledger(ray_cluster, tmp_path, staleness):
    pipeline, workers = make_pipeline(tmp_path, staleness=staleness, delay_seed=staleness)
    batches = run_steps(pipeline, workers, 8)
    seen = []
    for samples, metrics, version in batches:
        assert len(samples) == 24
        ages = [version - s.weight_version for s in samples]
        assert max(ages) <= staleness and metrics["rollout/staleness_max"] == max(ages)
        seen.append(max(ages))
    # The bound is reached, not trivially met: engines really run `staleness` steps ahead.
    assert max(seen) == staleness
    rows = read_ledger(tmp_path / "ledger.jsonl")
    trained = [r["prompt_id"] for r in rows if r["status"] == "trained"]
    assert sorted(trained) == list(range(len(trained))) and len(trained) == 8 * 6
    assert all(r["staleness"] <= staleness and r["attempts"] == 1 for r in rows)
    # Samples within a group are in sample order, groups in prompt-id order.
    for samples, _, _ in batches:
        keys = [(s.group_id, s.info["sample_index"]) for s in samples]
        assert keys == sorted(keys)


def test_dynamic_sampling_fills_batches_with_informative_groups(ray_cluster, tmp_path):
    pipeline, workers = make_pipeline(tmp_path, filter_groups=True, equal_every=3, staleness=1)
    for samples, metrics, _ in run_steps(pipeline, workers, 6):
        groups = {}
        for s in samples:
            groups.setdefault(s.group_id, []).append(s)
        assert len(groups) == 6 and all(len(g) == 4 for g in groups.values())
        assert not any(all_equal(g) for g in groups.values()), "an all-equal group was trained"
        assert metrics["rollout/filter_fill"] == 0 and metrics["rollout/filter_rounds"] <= 3
    rows = read_ledger(tmp_path / "ledger.jsonl")
    # Every prompt built to be all-equal was set aside (others may be all-equal by chance).
    assert {r["prompt_id"] for r in rows if r["prompt_id"] % 3 == 0} <= {
        r["prompt_id"] for r in rows if r["status"] == "filtered"
    }
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a prompt was decided twice"


def test_dynamic_sampling_honours_the_round_cap(ray_cluster, tmp_path):
    # Every group is all-equal: each step draws exactly max_rounds extra rounds, then fills.
    pipeline, workers = make_pipeline(tmp_path, filter_groups=True, equal_every=1, max_rounds=2)
    for samples, metrics, _ in run_steps(pipeline, workers, 3):
        assert len(samples) == 24
        assert metrics["rollout/filter_rounds"] == 2 and metrics["rollout/filter_fill"] == 6
    rows = read_ledger(tmp_path / "ledger.jsonl")
    assert {r["round"] for r in rows} == {0, 1, 2}


def test_episode_groups_staleness_by_oldest_turn_and_dynamic_sampling(ray_cluster, tmp_path):
    """Episodes (returns from the environment, no reward actors): a group's version is its
    oldest turn's, so staleness 1 expires the groups whose oldest turn is 2 versions old even
    though their newest turn is not; all-equal returns are set aside and more tasks drawn."""
    pipeline, workers = make_pipeline(
        tmp_path, staleness=1, filter_groups=True, max_rounds=4, episodes=True
    )
    for samples, metrics, version in run_steps(pipeline, workers, 5):
        assert len(samples) == 24
        oldest = [min(s.info["turn_versions"]) for s in samples]
        assert version - min(oldest) <= 1, "a trained episode has a turn older than the bound"
        assert metrics["rollout/staleness_max"] == version - min(oldest)
        groups = {}
        for s in samples:
            groups.setdefault(s.group_id, []).append(s.reward)
        assert not any(len(set(g)) == 1 for g in groups.values()), "an all-equal group trained"
    rows = read_ledger(tmp_path / "ledger.jsonl")
    expired = [r for r in rows if r["status"] == "expired"]
    # expired by the old turn alone: every one's newest turns were within the bound
    assert expired and all(
        r["staleness"] == 2 and max(v for ep in r["turn_versions"] for v in ep) == r["step"] - 2
        for r in expired
    )
    assert {r["prompt_id"] for r in rows if r["prompt_id"] % 3 == 0} <= {
        r["prompt_id"] for r in rows if r["status"] == "filtered"
    }
    assert all(r["turns"] == [2] * 4 for r in rows)
    ids = [r["prompt_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a group was decided twice"


def test_same_seed_same_batches_whatever_the_timing(ray_cluster, tmp_path):
    a, wa = make_pipeline(tmp_path, staleness=1, delay_seed=1, name="a.jsonl")
    b, wb = make_pipeline(tmp_path, staleness=1, delay_seed=2, engines=3, name="b.jsonl")
    fa = [fingerprint(s) for s, _, _ in run_steps(a, wa, 5)]
    fb = [fingerprint(s) for s, _, _ in run_steps(b, wb, 5)]
    assert fa == fb
    c, wc = make_pipeline(tmp_path, staleness=1, seed=1, name="c.jsonl")
    assert [fingerprint(s) for s, _, _ in run_steps(c, wc, 1)] != fa[:1]


def test_state_round_trip_resumes_exactly(ray_cluster, tmp_path):
    """Drain + state after step 3 of a staleness-2 run, restore into a new pipeline (through
    JSON, as a checkpoint does): steps 4-6 equal the uninterrupted run's."""
    whole, ww = make_pipeline(
        tmp_path, staleness=2, filter_groups=True, equal_every=4, name="w.jsonl"
    )
    expected = [fingerprint(s) for s, _, _ in run_steps(whole, ww, 6)]

    first, wf = make_pipeline(
        tmp_path, staleness=2, filter_groups=True, equal_every=4, name="r.jsonl"
    )
    got = [fingerprint(s) for s, _, _ in run_steps(first, wf, 3)]
    first.drain()
    state = json.loads(json.dumps(first.state()))
    assert state["kept"], "nothing was in flight: the test would not exercise the restore"
    second, ws = make_pipeline(
        tmp_path, staleness=2, filter_groups=True, equal_every=4, delay_seed=5, name="r.jsonl"
    )
    ray.get([w.receive_weights.remote(3) for w in ws])
    second.load_state(state, resumed_step=3)
    got += [fingerprint(s) for s, _, _ in run_steps(second, ws, 3, start_version=3)]
    assert got == expected
    ids = [r["prompt_id"] for r in read_ledger(tmp_path / "r.jsonl")]
    assert ids == [r["prompt_id"] for r in read_ledger(tmp_path / "w.jsonl")]
