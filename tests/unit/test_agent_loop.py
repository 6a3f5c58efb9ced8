"""The agent loop's bookkeeping with a fake engine (a seeded random sampler) and throwaway
environments: ids appended verbatim, masks, turn rewards, limits, seeds, environment faults;
and collate's interior masks. The real engine is tested in tests/integration/test_agents.py."""

from __future__ import annotations

import asyncio
import random
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

import agent_envs  # noqa: E402,F401  (registers countdown)

from rlhf.batch import GenerationRequest, Sample, collate  # noqa: E402
from rlhf.envs.base import make  # noqa: E402
from rlhf.rollout.agent_loop import (  # noqa: E402
    EpisodeLimits,
    ProcessEnv,
    ThreadEnv,
    env_metrics,
    episode_version,
    run_episode,
    transcript,
    turn_seed,
)

EOS = 2


class CharRenderer:
    """Characters as ids (ord + 10); a model turn ends with EOS."""

    stop_token_ids = [EOS]
    turn_end_ids = [EOS]

    def prompt_ids(self, messages, tools):
        return [ord(c) + 10 for m in messages for c in m["content"]]

    def delta_ids(self, messages):
        return self.prompt_ids(messages, [])

    def action_text(self, ids):
        return "".join(chr(i - 10) for i in ids if i != EOS)


class FakeEngine:
    """Samples 1..max_tokens ids from the seed alone; may end with EOS. Records its calls."""

    def __init__(self):
        self.calls = []

    async def __call__(self, context, seed, max_tokens, stop_ids):
        rng = random.Random(seed)
        n = rng.randint(1, max_tokens)
        ids = [rng.randint(48, 57) + 10 for _ in range(n)]
        if rng.random() < 0.7:
            ids[-1] = EOS
        self.calls.append((list(context), seed, max_tokens, ids))
        await asyncio.sleep(0)
        return ids, [-0.5] * n, list(context)


POOL = ThreadPoolExecutor(8)
LIMITS = EpisodeLimits(max_turns=4, max_tokens_per_turn=5, max_episode_tokens=64, step_timeout_s=2)


def _episode(engine, seed=7, limits=LIMITS, isolation="thread", **env_kwargs):
    req = GenerationRequest(prompt_id=3, sample_index=1, seed=seed, prompt="12+", answer="x")
    if isolation == "process":
        env = ProcessEnv("agent_envs:countdown", env_kwargs, POOL, limits.step_timeout_s)
    else:
        env = ThreadEnv(lambda: make("countdown", **env_kwargs), POOL, limits.step_timeout_s)
    return asyncio.run(run_episode(engine, env, CharRenderer(), req, limits))


def test_ids_are_prompt_sampled_and_env_tokens_verbatim():
    engine = FakeEngine()
    s = _episode(engine, turns=3)
    assert s.info["turns"] == 3 and not s.info["truncated"] and s.info["success"] is True
    assert len(s.response_mask) == len(s.response_ids) == len(s.rollout_logprobs)
    # Each engine call saw exactly the episode's ids so far: the prompt, then every earlier
    # sampled id and environment id, never re-encoded.
    full = s.prompt_ids + s.response_ids
    assert engine.calls[0][0] == s.prompt_ids
    # Each engine call saw exactly the episode's ids so far (prompt, earlier sampled ids and
    # environment ids, never re-encoded); its sampled ids follow verbatim with mask 1, then the
    # environment's ids with mask 0, up to the next call's context.
    p = len(s.prompt_ids)
    ends = [len(c[0]) for c in engine.calls[1:]] + [len(full)]
    for (context, _, _, sampled), start, end in zip(engine.calls, s.info["turn_starts"], ends):
        assert full[: len(context)] == context and start == len(context) - p
        assert full[len(context) : len(context) + len(sampled)] == sampled
        assert s.response_mask[start : start + len(sampled)] == [1] * len(sampled)
        assert s.response_mask[start + len(sampled) : end - p] == [0] * (
            end - p - start - len(sampled)
        )
    assert all(lp == 0.0 for lp, m in zip(s.rollout_logprobs, s.response_mask) if not m)
    assert all(lp == -0.5 for lp, m in zip(s.rollout_logprobs, s.response_mask) if m)
    # Turn rewards sit on the last sampled token of their turn.
    assert [r for _, r in s.turn_rewards] == [0.25, 0.25, 1.0]
    for pos, _ in s.turn_rewards:
        assert s.response_mask[pos] == 1 and (
            pos + 1 == len(s.response_mask) or s.response_mask[pos + 1] == 0
        )
    assert s.info["env_return"] == 1.5
    assert s.info["tool_calls"] == 3


def test_cut_turns_get_a_closing_eos_with_mask_0():
    s = _episode(FakeEngine(), seed=11, turns=4)
    for pos, _ in s.turn_rewards[:-1]:
        ended = s.response_ids[pos] == EOS
        # the turn's sampled ids end at pos; if it was cut, an unsampled EOS follows
        assert ended or (s.response_ids[pos + 1] == EOS and s.response_mask[pos + 1] == 0)


def test_same_seed_same_episode_and_turn_seeds_differ():
    a, b = _episode(FakeEngine()), _episode(FakeEngine())
    assert a.response_ids == b.response_ids and a.response_mask == b.response_mask
    c = _episode(FakeEngine(), seed=8)
    assert c.response_ids != a.response_ids
    assert len({turn_seed(7, t) for t in range(8)}) == 8


def test_each_turn_records_its_weight_version_and_the_episode_takes_the_oldest():
    """A sync landing between turns (version 4 -> 5, while the environment steps) and one
    landing while a turn is sampled (5 -> 6): each turn records the oldest version it may hold
    tokens of, the episode the oldest of its turns'."""
    version = [4]
    engine = FakeEngine()

    async def syncing(context, seed, max_tokens, stop_ids):
        out = await engine(context, seed, max_tokens, stop_ids)
        if len(engine.calls) == 3:
            version[0] = 6  # mid-turn: this turn's tokens may be partly the old weights'
        return out

    class SyncBetweenTurns(CharRenderer):
        def action_text(self, ids):  # runs after the turn's version is recorded
            if len(engine.calls) == 1:
                version[0] = 5
            return super().action_text(ids)

    req = GenerationRequest(prompt_id=3, sample_index=1, seed=7, prompt="12+", answer="x")
    env = ThreadEnv(lambda: make("countdown", turns=3), POOL, 2)
    s = asyncio.run(run_episode(syncing, env, SyncBetweenTurns(), req, LIMITS, lambda: version[0]))
    assert s.info["turns"] == 3 and s.info["turn_versions"] == [4, 5, 5]
    assert episode_version(s.info["turn_versions"], default=6) == 4
    assert episode_version([], default=6) == 6  # nothing sampled: the engine's version
    assert _episode(FakeEngine()).info["turn_versions"] == [0, 0, 0]  # no version given: 0s


def test_limits_max_turns_and_budget_truncate():
    s = _episode(FakeEngine(), turns=10)
    assert s.info["turns"] == 4 and s.info["truncated"] and s.finish_reason == "length"
    assert s.response_mask[-1] == 1  # no environment reply after the last allowed turn
    tight = EpisodeLimits(
        max_turns=10, max_tokens_per_turn=5, max_episode_tokens=12, step_timeout_s=2
    )
    s = _episode(FakeEngine(), limits=tight, turns=10)
    assert s.info["truncated"] and len(s.prompt_ids) + len(s.response_ids) <= 12


# An env that exits its process can only be contained with isolation=process.
@pytest.mark.parametrize(
    "fault, isolation",
    [
        ("raise", "thread"),
        ("hang", "thread"),
        ("raise", "process"),
        ("hang", "process"),
        ("exit", "process"),
    ],
)
def test_env_faults_end_the_episode_only(fault, isolation):
    limits = EpisodeLimits(
        max_turns=4, max_tokens_per_turn=5, max_episode_tokens=64, step_timeout_s=1
    )
    s = _episode(FakeEngine(), limits=limits, isolation=isolation, fault=fault, fault_seeds=[7])
    err = s.info["env_error"]
    expected = {"raise": "exception: RuntimeError", "hang": "timeout", "exit": "crash"}[fault]
    assert err.startswith(expected), err
    ok = _episode(FakeEngine(), limits=limits, isolation=isolation, fault=fault, fault_seeds=[8])
    assert ok.info["env_error"] == "" and ok.info["turns"] == 3
    m = env_metrics([s, ok])
    assert m["env/timeouts"] == (fault == "hang") and m["env/errors"] == (fault != "hang")


def test_process_isolation_gives_the_same_episode():
    assert (
        _episode(FakeEngine(), isolation="process").response_ids
        == _episode(FakeEngine()).response_ids
    )


def _episode_sample(mask, turn_rewards, reward, group=0, **info):
    n = len(mask)
    return Sample(
        group_id=group,
        prompt_ids=[5, 6],
        response_ids=list(range(10, 10 + n)),
        rollout_logprobs=[-1.0 if m else 0.0 for m in mask],
        response_mask=mask,
        turn_rewards=turn_rewards,
        reward=reward,
        info=info,
    )


def test_collate_interior_mask_turn_rewards_and_lost_episodes():
    a = _episode_sample([1, 1, 0, 0, 1], [(1, 0.25), (4, 1.0)], reward=1.75)  # +0.5 transcript
    lost = _episode_sample([1, 0, 1], [(0, 0.25)], reward=0.25, env_error="timeout")
    single = Sample(group_id=1, prompt_ids=[5], response_ids=[7, 8], reward=2.0)
    b = collate([a, lost, single])
    start = 1  # prompt of 2 tokens: action j predicts token j + 1
    assert b.action_mask[0, start : start + 5].tolist() == [1, 1, 0, 0, 1]
    assert b.token_rewards[0, start + 1] == 0.25 and b.token_rewards[0, start + 4] == 1.5
    assert b.token_rewards[0].sum() == pytest.approx(1.75)
    assert b.action_mask[1].sum() == 0 and b.seq_rewards[1] == 0.0
    assert b.group_ids[1] < 0 and b.group_ids[0] == 0 and b.group_ids[2] == 1
    assert b.action_mask[2, :2].tolist() == [1, 1]
    assert torch.equal(b.input_ids[0, :7], torch.tensor([5, 6, 10, 11, 12, 13, 14]))


def test_transcript_marks_segments():
    s = _episode_sample([1, 1, 0, 1], [], 0.0)
    parts = transcript(s, lambda ids: ",".join(map(str, ids)))
    assert parts == [
        {"by": "model", "text": "10,11"},
        {"by": "env", "text": "12"},
        {"by": "model", "text": "13"},
    ]


@pytest.mark.parametrize("score_transcript", [False, True])
def test_pipeline_episode_reward_is_return_plus_transcript_score(score_transcript):
    from rlhf.config import RolloutConfig
    from rlhf.pipeline import RolloutPipeline

    class Rewards:  # the reward actors' stand-in: the transcript scores 0.5
        def __init__(self):
            self.calls = 0

        def score(self, samples):
            self.calls += 1
            for s in samples:
                s.reward = 0.5
            pipe._on_scored(samples)
            return []

    cfg = RolloutConfig(prompts_per_step=1, samples_per_prompt=2)
    rewards = Rewards()
    pipe = RolloutPipeline(cfg, None, [], rewards, seed=0, score_episodes=score_transcript)
    pipe.ledger.issue(0, 1, 0)
    pipe.requests[0] = []
    eps = [
        _episode_sample([1, 0, 1], [(0, 0.0), (2, 1.0)], 0.0, engine_call_s=0.1, env_return=1.0)
        for _ in range(2)
    ]
    for i, s in enumerate(eps):
        s.info["sample_index"] = i
    pipe._on_generated(eps)
    assert rewards.calls == int(score_transcript)  # no transcript score: no reward call
    assert [s.reward for s in pipe.kept[0]] == [1.5 if score_transcript else 1.0] * 2
