"""The newer policy losses (CISPO, GMPO, Clip-Cov, KL-Cov) and the seq-mean-token-sum
aggregation against plain-Python loop references, on random inputs with masks and an empty
response; plus their gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch.testing import assert_close

from rlhf.algos import LOSS_AGGREGATIONS, POLICY_LOSSES, AggTotals, PolicyLossParams

SEEDS = [0, 1, 2, 3]


def L(t):
    return t.tolist()


def make_pg_batch(seed, B=5, T=7, drift=0.5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    lp = old + drift * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) < 0.8).long()
    mask[:, 0] = 1
    mask[B - 1] = 0  # empty response
    return lp, old, adv, mask


def valid_tokens(m):
    return [(b, t) for b in range(len(m)) for t in range(len(m[0])) if m[b][t]]


def mean_over(vals, d):
    return sum(vals) / d if d else 0.0


# --------------------------------------------------------------------------- CISPO


def ref_cispo(lp, old, A, m, p):
    B, T = len(lp), len(lp[0])
    loss = [[0.0] * T for _ in range(B)]
    grad = [[0.0] * T for _ in range(B)]
    lo = hi = 0
    for b, t in valid_tokens(m):
        r = math.exp(max(-20, min(20, lp[b][t] - old[b][t])))
        w = min(max(r, 1 - p.clip_low), 1 + p.clip_high)
        lo += r < 1 - p.clip_low
        hi += r > 1 + p.clip_high
        loss[b][t] = -w * A[b][t] * lp[b][t]
        grad[b][t] = -w * A[b][t]  # the weight is a constant (stop-gradient)
    n = len(valid_tokens(m))
    return (
        loss,
        grad,
        {"clip_frac": (lo + hi) / n, "clip_frac_low": lo / n, "clip_frac_high": hi / n},
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip_low,clip_high", [(0.2, 0.28), (1.0, 0.5)])
def test_cispo_matches_reference(seed, clip_low, clip_high):
    p = PolicyLossParams(clip_low=clip_low, clip_high=clip_high)
    lp, old, adv, mask = make_pg_batch(seed)
    lp.requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get("cispo")(lp, old, adv, mask, p)
    e_loss, e_grad, e_m = ref_cispo(L(lp.detach()), L(old), L(adv), L(mask), p)
    assert_close(loss, torch.tensor(e_loss, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert_close(grad, torch.tensor(e_grad, dtype=torch.float64))
    for k, v in e_m.items():
        assert metrics[k].item() == pytest.approx(v, abs=1e-12), k
    # Unlike PPO-clip, every valid token keeps a gradient, even the truncated ones.
    assert metrics["clip_frac"].item() > 0
    assert (grad[(mask == 1) & (adv != 0)] != 0).all()
    assert (grad[mask == 0] == 0).all()


# --------------------------------------------------------------------------- GMPO


def ref_gmpo(lp, old, A, m, p):
    B, T = len(lp), len(lp[0])
    lo, hi = math.log(1 - p.clip_low), math.log(1 + p.clip_high)
    loss = [[0.0] * T for _ in range(B)]
    grad = [[0.0] * T for _ in range(B)]
    clipped = 0
    for b in range(B):
        ts = [t for t in range(T) if m[b][t]]
        if not ts:
            continue
        lrs, free = [], []
        for t in ts:
            x = lp[b][t] - old[b][t]
            s = (A[b][t] > 0) - (A[b][t] < 0)
            c = min(max(x, lo), hi)
            y = s * min(s * x, s * c)
            clipped += y != x
            lrs.append(y)
            free.append(y == x and s != 0)  # gradient flows only through unclipped tokens
        n = len(ts)
        seq_ratio = math.exp(sum(lrs) / n)
        seq_adv = sum(A[b][t] for t in ts) / n
        val = -seq_adv * seq_ratio
        for k, t in enumerate(ts):
            loss[b][t] = val
            # loss.sum() over the row = n * val; d/d lp_t = n * (-seq_adv * seq_ratio / n)
            grad[b][t] = -seq_adv * seq_ratio if free[k] else 0.0
    return loss, grad, clipped / len(valid_tokens(m))


@pytest.mark.parametrize("seed", SEEDS)
def test_gmpo_matches_reference(seed):
    p = PolicyLossParams(clip_low=1 - math.exp(-0.4), clip_high=math.exp(0.4) - 1)
    lp, old, adv, mask = make_pg_batch(seed, drift=0.6)
    lp.requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get("gmpo")(lp, old, adv, mask, p)
    e_loss, e_grad, e_clip = ref_gmpo(L(lp.detach()), L(old), L(adv), L(mask), p)
    assert_close(loss, torch.tensor(e_loss, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert_close(grad, torch.tensor(e_grad, dtype=torch.float64))
    assert metrics["clip_frac"].item() == pytest.approx(e_clip, abs=1e-12)
    assert 0 < e_clip < 1
    assert (loss[mask == 0] == 0).all() and (grad[mask == 0] == 0).all()


def test_gmpo_is_geometric_mean_of_ratios():
    # unclipped: the sequence ratio is the geometric mean of the token ratios
    old = torch.zeros(1, 3, dtype=torch.float64)
    lp = torch.log(torch.tensor([[1.1, 0.9, 1.2]], dtype=torch.float64))
    adv = torch.ones(1, 3, dtype=torch.float64)
    loss, _ = POLICY_LOSSES.get("gmpo")(lp, old, adv, torch.ones(1, 3), PolicyLossParams(0.5, 0.5))
    gm = (1.1 * 0.9 * 1.2) ** (1 / 3)
    assert_close(loss, torch.full((1, 3), -gm, dtype=torch.float64))
    agg = LOSS_AGGREGATIONS.get("seq-mean-token-mean")(loss, torch.ones(1, 3))
    assert agg.item() == pytest.approx(-gm)


# --------------------------------------------------------------------------- Clip-Cov / KL-Cov


def ref_cov(lp, A, m):
    vt = valid_tokens(m)
    ma = sum(A[b][t] for b, t in vt) / len(vt)
    ml = sum(lp[b][t] for b, t in vt) / len(vt)
    return {(b, t): (A[b][t] - ma) * (lp[b][t] - ml) for b, t in vt}


def cov_batch(seed):
    # Large advantages and log-probs so that some covariances fall in (1, 5).
    lp, old, adv, mask = make_pg_batch(seed, B=8, T=9, drift=0.3)
    return lp * 2, old * 2, adv * 2, mask


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ratio", [1e-4, 0.1])
def test_clip_cov_detaches_chosen_candidates_only(seed, ratio):
    p = PolicyLossParams(cov_ratio=ratio, generator=torch.Generator().manual_seed(seed))
    lp, old, adv, mask = cov_batch(seed)
    lp.requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get("clip_cov")(lp, old, adv, mask, p)
    ppo, ppo_m = POLICY_LOSSES.get("ppo_clip")(lp, old, adv, mask, p)
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    (ppo_grad,) = torch.autograd.grad(ppo.sum(), lp)
    cov = ref_cov(L(lp.detach()), L(adv), L(mask))
    lpl, oldl, advl = L(lp.detach()), L(old), L(adv)
    cands = set()
    for (b, t), c in cov.items():
        r = math.exp(lpl[b][t] - oldl[b][t])
        clipped = -advl[b][t] * min(max(r, 0.8), 1.2) > -advl[b][t] * r
        if 1.0 < c < 5.0 and not clipped:
            cands.add((b, t))
    n_pick = min(max(int(ratio * len(cov)), 1), len(cands))
    zeroed = {(b, t) for (b, t) in cov if loss[b, t].item() == 0 and ppo[b, t].item() != 0}
    assert len(cands) > 0 and len(zeroed) == n_pick and zeroed <= cands
    for b, t in cov:
        if (b, t) in zeroed:
            assert grad[b, t].item() == 0
        else:
            assert loss[b, t].item() == pytest.approx(ppo[b, t].item())
            assert grad[b, t].item() == pytest.approx(ppo_grad[b, t].item())
    assert metrics["cov_clip_frac"].item() == pytest.approx(n_pick / len(cov))
    for k in ppo_m:
        assert metrics[k].item() == pytest.approx(ppo_m[k].item())


def test_clip_cov_is_reproducible_with_a_generator():
    lp, old, adv, mask = cov_batch(0)
    a = POLICY_LOSSES.get("clip_cov")(
        lp,
        old,
        adv,
        mask,
        PolicyLossParams(cov_ratio=0.1, generator=torch.Generator().manual_seed(5)),
    )[0]
    b = POLICY_LOSSES.get("clip_cov")(
        lp,
        old,
        adv,
        mask,
        PolicyLossParams(cov_ratio=0.1, generator=torch.Generator().manual_seed(5)),
    )[0]
    assert torch.equal(a, b)


def ref_kl_cov(lp, old, A, m, p):
    B, T = len(lp), len(lp[0])
    cov = ref_cov(lp, A, m)
    n = max(int(p.cov_ratio * len(cov)), 1)
    top = set(sorted(cov, key=lambda k: -cov[k])[:n])
    loss = [[0.0] * T for _ in range(B)]
    grad = [[0.0] * T for _ in range(B)]
    for b, t in cov:
        x = lp[b][t] - old[b][t]
        r = math.exp(x)
        loss[b][t] = -A[b][t] * r
        grad[b][t] = -A[b][t] * r
        if (b, t) in top:
            loss[b][t] += p.kl_cov_coef * abs(x)
            grad[b][t] += p.kl_cov_coef * (1 if x > 0 else -1)
    return loss, grad, len(top) / len(cov)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ratio,coef", [(1e-4, 1.0), (0.2, 0.5)])
def test_kl_cov_matches_reference(seed, ratio, coef):
    p = PolicyLossParams(cov_ratio=ratio, kl_cov_coef=coef)
    lp, old, adv, mask = cov_batch(seed)
    lp.requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get("kl_cov")(lp, old, adv, mask, p)
    e_loss, e_grad, e_frac = ref_kl_cov(L(lp.detach()), L(old), L(adv), L(mask), p)
    assert_close(loss, torch.tensor(e_loss, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert_close(grad, torch.tensor(e_grad, dtype=torch.float64))
    assert metrics["kl_cov_frac"].item() == pytest.approx(e_frac)


@pytest.mark.parametrize("name", ["cispo", "gmpo", "clip_cov", "kl_cov"])
def test_new_losses_all_masked_and_extreme_ratios_are_finite(name):
    lp = torch.tensor(
        [[0.0, -60.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64, requires_grad=True
    )
    old = torch.tensor([[-60.0, 0.0, 0.0], [-1.0, -1.0, -1.0]], dtype=torch.float64)
    adv = torch.tensor([[1.0, -1.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    for mask in (torch.tensor([[1, 1, 1], [0, 0, 0]]), torch.zeros(2, 3, dtype=torch.long)):
        loss, metrics = POLICY_LOSSES.get(name)(lp, old, adv, mask, PolicyLossParams())
        (grad,) = torch.autograd.grad(loss.sum(), lp)
        assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
        assert all(math.isfinite(float(v)) for v in metrics.values())
        assert (loss[mask == 0] == 0).all()


# --------------------------------------------------------------------------- aggregation


@pytest.mark.parametrize("seed", SEEDS)
def test_seq_mean_token_sum_matches_reference_and_microbatches_add_up(seed):
    lp, _, _, mask = make_pg_batch(seed, B=6)
    per_token = lp
    agg = LOSS_AGGREGATIONS.get("seq-mean-token-sum")
    m, x = L(mask), L(per_token)
    seqs = [sum(v for v, mv in zip(row, mrow) if mv) for row, mrow in zip(x, m)]
    nseq = sum(1 for mrow in m if any(mrow))
    assert agg(per_token, mask).item() == pytest.approx(sum(seqs) / nseq)
    # micro-batches with the minibatch's total_seqs sum to the minibatch value
    totals = AggTotals.of(mask)
    assert totals.seqs == nseq
    parts = [agg(per_token[i : i + 2], mask[i : i + 2], totals) for i in (0, 2, 4)]
    assert sum(p.item() for p in parts) == pytest.approx(sum(seqs) / nseq)
    assert agg(per_token, torch.zeros_like(mask)).item() == 0.0
