"""rlhf/evaluation.py with a fake engine and fake reward group (no Ray): the requests it
builds, pass@k against a brute-force reference, the schedule, and that it leaves the
training stream alone."""

import itertools
import json
import math
import random

import pytest

from rlhf.batch import Sample
from rlhf.config import DataConfig, EvalConfig
from rlhf.data import PromptSource
from rlhf.evaluation import Evaluator, eval_prompts, pass_at_k


def brute_pass_at_k(outcomes: list[bool], k: int) -> float:
    """Share of all k-subsets of the n samples with at least one correct one."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,k", [(8, 1), (8, 4), (8, 8), (5, 2)])
def test_pass_at_k_matches_brute_force(n, k):
    rng = random.Random(n * 10 + k)
    for _ in range(20):
        outcomes = [rng.random() < 0.3 for _ in range(n)]
        assert pass_at_k(n, sum(outcomes), k) == pytest.approx(brute_pass_at_k(outcomes, k))


class FakeEngine:
    """Answers correctly when greedy; sampled request j of prompt i is right when
    (i + j) % 3 == 0."""

    def __init__(self):
        self.calls = []
        self.generate = self  # engine.generate.remote(requests)

    def remote(self, requests):
        self.calls.append(requests)
        out = []
        for r in requests:
            right = r.temperature == 0.0 or (r.prompt_id + r.sample_index) % 3 == 0
            out.append(
                Sample(
                    group_id=r.prompt_id,
                    prompt=r.prompt,
                    answer=r.answer,
                    response=r.answer if right else "x",
                    response_ids=[1, 2],
                    finish_reason="stop",
                )
            )
        return out


class FakeRewards:
    def score(self, samples):
        for s in samples:
            s.reward = float(s.response == s.answer)
        return [samples]


@pytest.fixture
def no_ray(monkeypatch):
    import ray

    monkeypatch.setattr(ray, "get", lambda x: x)


def test_requests_greedy_plus_sampled_with_fixed_seeds():
    cfg = EvalConfig(samples=4, pass_k=[1, 4])
    prompts = eval_prompts(cfg, DataConfig(), seed=0)
    assert len(prompts) == 49  # the whole addition table
    a = Evaluator(cfg, prompts, seed=0, total_steps=10).requests
    b = Evaluator(cfg, prompts, seed=0, total_steps=10).requests
    assert len(a) == 49 * 5
    assert [r.seed for r in a] == [r.seed for r in b]
    assert len({r.seed for r in a}) == len(a)
    assert [r.temperature for r in a[:5]] == [0.0, 1.0, 1.0, 1.0, 1.0]
    assert [r.seed for r in Evaluator(cfg, prompts, seed=1, total_steps=10).requests] != [
        r.seed for r in a
    ]


def test_run_metrics_on_two_engines(no_ray):
    cfg = EvalConfig(samples=3, pass_k=[1, 3])
    prompts = [{"prompt": f"{i}=", "answer": str(i), "fields": {}} for i in range(6)]
    ev = Evaluator(cfg, prompts, seed=0, total_steps=10)
    engines = [FakeEngine(), FakeEngine()]
    m = ev.run(engines, FakeRewards(), step=0)
    assert all(len(e.calls) == 1 for e in engines)
    # every engine gets whole prompts (greedy + its samples together)
    for e in engines:
        ids = [r.prompt_id for r in e.calls[0]]
        assert all(ids.count(i) == 4 for i in set(ids))
    assert m["eval/greedy_accuracy"] == 1.0 and m["eval/prompts"] == 6
    # sampled j = 1..3 of prompt i is right iff (i + j) % 3 == 0: exactly one of three per prompt
    assert m["eval/sampled_reward"] == pytest.approx(1 / 3)
    assert m["eval/pass@1"] == pytest.approx(1 / 3)
    assert m["eval/pass@3"] == pytest.approx(1.0)
    assert math.isfinite(m["eval/time_s"])


def test_due_schedule():
    ev = Evaluator(EvalConfig(every=5), [], seed=0, total_steps=12)
    assert [s for s in range(13) if ev.due(s)] == [0, 5, 10, 12]
    assert not any(
        Evaluator(EvalConfig(every=0), [], seed=0, total_steps=12).due(s) for s in range(13)
    )


def test_eval_file_set_is_fixed_and_leaves_the_training_stream_alone(tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps({"q": f"{i}+1=", "a": i + 1}) + "\n" for i in range(30)))
    data = DataConfig(path=str(path), prompt_key="q", answer_key="a")
    train_a = PromptSource(data, seed=4)
    first = train_a.next(5)
    cfg = EvalConfig(path=str(path), num_prompts=10)
    set1 = eval_prompts(cfg, data, seed=4)
    assert len(set1) == 10 and set1 == eval_prompts(cfg, data, seed=4)
    rest_a = train_a.next(10)
    train_b = PromptSource(data, seed=4)
    assert train_b.next(5) == first and train_b.next(10) == rest_a
    # the built-in task: a sample drawn with the eval's own RNG, not the training one
    src = PromptSource(DataConfig(task="reverse"), seed=4)
    before = random.getstate()
    probs = eval_prompts(EvalConfig(num_prompts=16), DataConfig(task="reverse"), seed=4)
    assert random.getstate() == before and len(probs) == 16
    assert src.next(3) == PromptSource(DataConfig(task="reverse"), seed=4).next(3)
