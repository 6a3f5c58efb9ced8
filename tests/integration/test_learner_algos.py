"""The real learner group (Ray + DeepSpeed on CPU, tiny model) under the algorithm features that
live in the worker: a NaN loss on one rank skips that optimizer step on every rank with weights
and optimizer state unchanged (ZeRO 0 and 2), and the LLM critic (PPO) trains under ZeRO-3
with value clipping while only the policy's weights are offered to the rollout engines."""

import os
from pathlib import Path

import pytest
import ray
import torch

from rlhf import algos
from rlhf.batch import Sample, collate
from rlhf.config import RootConfig
from rlhf.learner.group import LearnerGroup

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent


def _batch(rows=32):
    # 8 prompts x 4 answers; the first answer of each prompt is rewarded.
    samples = [
        Sample(
            group_id=i // 4,
            prompt_ids=[5, 6, 7, 8],
            response_ids=[9 + i % 4, 2],
            rollout_logprobs=[0.0, 0.0],
            reward=float(i % 4 == 0),
        )
        for i in range(rows)
    ]
    return collate(samples)


def _checksums(learners):
    return (
        ray.get([a.state_checksum.remote() for a in learners.actors]),
        ray.get([a.optimizer_checksum.remote() for a in learners.actors]),
    )


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_nan_loss_on_one_rank_skips_the_step_everywhere(learner_group, tiny_model_path, zero_stage):
    cfg = RootConfig()
    cfg.model.path = tiny_model_path
    cfg.learner.zero_stage = zero_stage
    cfg.learner.micro_batch_size = 8  # 2 micro-batches per rank: gradient accumulation
    cfg.algo.lr = 3e-3
    cfg.algo.policy_loss = "nan_loss:nan_on_calls"
    cfg.algo.lr_schedule = "linear"  # a skipped update must not advance the schedule either
    # Calls 3 and 4 are the second update's two micro-batches; rank 0 poisons only the first.
    env = {
        "env_vars": {
            "RLHF_TEST_NAN_CALLS": "3",
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
    }
    learners = learner_group(cfg, 32, env)
    batch = _batch()
    batch.advantages = torch.where(batch.seq_rewards > 0, 1.0, -1.0)[:, None] * batch.action_mask

    def update():
        fresh = LearnerGroup.attach(batch, ray.get(learners.compute_logprobs(batch)))
        return LearnerGroup.reduce(ray.get(learners.update(fresh)))

    w0, o0 = _checksums(learners)
    m1 = update()
    w1, o1 = _checksums(learners)
    assert m1["learner/skipped_updates"] == 0 and w1[0] != w0[0]
    m2 = update()  # NaN on rank 0's first micro-batch
    w2, o2 = _checksums(learners)
    assert m2["learner/skipped_updates"] == 1
    assert w2 == w1, "a skipped update changed the weights"
    assert o2 == o1, "a skipped update changed the optimizer state"
    assert m2["learner/lr"] == m1["learner/lr"], "a skipped update advanced the LR schedule"
    m3 = update()
    w3, _ = _checksums(learners)
    assert m3["learner/skipped_updates"] == 0 and w3[0] != w2[0]
    assert m3["learner/lr"] < m2["learner/lr"]
    assert w3[0] == pytest.approx(w3[1], rel=1e-9), "ranks disagree"
    assert all(torch.isfinite(torch.tensor(v)) for v in m3.values())


def test_llm_critic_learns_under_zero3_and_is_not_synced(learner_group, tiny_model_path):
    cfg = RootConfig()
    cfg.model.path = tiny_model_path
    cfg.learner.zero_stage = 3
    cfg.learner.micro_batch_size = 8
    cfg.algo.advantage = "gae"
    cfg.algo.lr = 1e-4
    cfg.algo.critic_lr = 1e-3
    cfg.algo.value_clip = 0.2
    learners = learner_group(cfg, 32)
    names = [m[0] for m in ray.get(learners.weight_meta())]
    assert names and not any("value_head" in n or "backbone" in n for n in names)
    batch = _batch()
    value_losses, explained = [], []
    for _ in range(8):
        fresh = LearnerGroup.attach(batch, ray.get(learners.compute_logprobs(batch)))
        assert fresh.values.shape == batch.action_mask.shape
        adv, ret = algos.ADVANTAGE_ESTIMATORS.get("gae")(
            algos.AdvantageInputs(fresh.token_rewards, fresh.action_mask, values=fresh.values),
            algos.AdvantageParams(lam=0.95),
        )
        fresh.advantages, fresh.returns = adv, ret
        explained.append(float(algos.explained_variance(fresh.values, ret, fresh.action_mask)))
        m = LearnerGroup.reduce(ray.get(learners.update(fresh)))
        value_losses.append(m["algo/value_loss"])
        assert 0.0 <= m["algo/value_clip_frac"] <= 1.0
        assert m["learner/critic_lr"] == pytest.approx(1e-3) and m["learner/lr"] == pytest.approx(
            1e-4
        )
    # The critic's loss (what its optimizer minimises) falls; its predictions explain more.
    # (The first action's state is the shared prompt: about half the initial loss is the
    # irreducible variance of the reward there.)
    assert max(value_losses[-2:]) < 0.8 * value_losses[0], value_losses
    assert explained[-1] > explained[0], explained
    w = ray.get([a.state_checksum.remote() for a in learners.actors])
    assert w[0] == pytest.approx(w[1], rel=1e-9), "ranks disagree"
