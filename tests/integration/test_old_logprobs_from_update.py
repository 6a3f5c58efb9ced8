"""Old logprobs from the update's own forward pass (rlhf/learner/old_logprobs.py) on the real
DeepSpeed learner in Ray: with one optimizer step per batch, a group that skips the separate
pass gives the same loss, gradient, weights, diagnostics and logprob metrics as a group of the
same configuration that is handed the separate pass's old logprobs. With a KL loss, so the
reference's pass still runs, alone; two micro-batches in shuffled order; ZeRO-0, where the
gradient lies on the parameters when the optimizer steps."""

from dataclasses import replace

import pytest
import torch

pytestmark = pytest.mark.integration


def batch():
    from rlhf.batch import Sample, collate

    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(8):
        n = 3 + i % 3
        ids = torch.randint(5, 15, (4 + n,), generator=g).tolist()
        samples.append(
            Sample(
                group_id=i // 4,
                prompt_ids=ids[:4],
                response_ids=ids[4:],
                rollout_logprobs=(-1.0 - torch.rand(n, generator=g)).tolist(),
            )
        )
    b = collate(samples)
    b.advantages = torch.randn(b.action_mask.shape, generator=g) * b.action_mask
    return b


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_update_supplies_the_old_logprobs_exactly(ray_local, learner_group):
    from rlhf.config import AlgoConfig, LearnerConfig, RootConfig
    from rlhf.learner.group import LearnerGroup
    from rlhf.trainer import Trainer

    # Run in the actors (__ray_call__), defined here so Ray pickles them by value.
    def _record_gradients(worker) -> None:
        """In the actor: keep a flat copy of the gradient each time the optimizer steps."""
        opt = worker.engine.optimizer
        step, worker.recorded = opt.step, []

        def recording_step(*args, **kwargs):
            worker.recorded.append(
                torch.cat(
                    [
                        p.grad.detach().double().flatten()
                        for p in worker.engine.module.parameters()
                        if p.grad is not None
                    ]
                )
            )
            return step(*args, **kwargs)

        opt.step = recording_step

    def _state(worker):
        weights = torch.cat(
            [p.detach().double().flatten() for p in worker.engine.module.parameters()]
        )
        return weights, worker.recorded

    cfg = replace(
        RootConfig(),
        learner=LearnerConfig(num_ranks=1, micro_batch_size=4, diagnostics_every=1, zero_stage=0),
        algo=AlgoConfig(rollout_is="none", kl_coef=0.1, lr=1e-3),
    )
    separate, fused = learner_group(cfg, rows_per_step=8), learner_group(cfg, rows_per_step=8)
    assert fused.old_from_update and fused.scores_needed  # the reference still scores
    for g in (separate, fused):
        ray_local.get(g.actors[0].__ray_call__.remote(_record_gradients))
    b = batch()

    # The separate pass, as before: the old logprobs are handed to the update.
    scores = LearnerGroup.attach(b, ray_local.get(separate.compute_logprobs(b)))
    with_old = scores
    m_sep = LearnerGroup.reduce(ray_local.get(separate.update(with_old)))
    # The trainer's metrics of the old logprobs, from that pass.
    expected = Trainer.batch_metrics(with_old)

    # The skip: only the reference's logprobs come before the update.
    fused_scores = LearnerGroup.attach(b, ray_local.get(fused.scores_for_update(b)))
    assert fused_scores.old_logprobs is None and fused_scores.ref_logprobs is not None
    assert torch.equal(fused_scores.ref_logprobs, scores.ref_logprobs)
    m_fused = LearnerGroup.reduce(ray_local.get(fused.update(fused_scores)))

    # (ZeRO-0 reports no grad norm: the recorded gradients are compared below.)
    for k in ("algo/loss", "algo/pg_loss", "algo/kl"):
        assert m_fused[k] == pytest.approx(m_sep[k], rel=1e-6, abs=1e-9), k
    # The diagnostics pass read the update's old logprobs back in the batch's row order.
    for k in ("algo/update_kl", "algo/update_gain"):
        assert m_fused[k] == pytest.approx(m_sep[k], rel=1e-5, abs=1e-9), k
    assert m_sep["algo/update_kl"] > 0  # the update moved the policy: the check can fail
    # The metrics the trainer took from the old logprobs now come from the update.
    assert m_fused["rollout/logprob_diff"] == pytest.approx(
        expected["rollout/logprob_diff"], rel=1e-6
    )
    assert m_fused["algo/kl_ref"] == pytest.approx(expected["algo/kl_ref"], abs=1e-7)
    ratio = torch.exp(scores.old_logprobs - b.rollout_logprobs)
    w = float((ratio * b.action_mask).sum() / b.action_mask.sum())
    assert m_fused["algo/rollout_is_weight_mean"] == pytest.approx(w, rel=1e-5)
    assert "rollout/logprob_diff" not in m_sep  # the separate pass's are the trainer's

    (w_sep, g_sep), (w_fused, g_fused) = (
        ray_local.get(g.actors[0].__ray_call__.remote(_state)) for g in (separate, fused)
    )
    assert len(g_sep) == len(g_fused) == 1
    assert rel(g_fused[0], g_sep[0]) < 1e-6
    assert rel(w_fused, w_sep) < 1e-7
