"""rlhf.algos against plain-Python loop references (floats, one sample/token at a time)."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch.testing import assert_close

from rlhf import algos
from rlhf.algos import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    AdvantageInputs,
    AdvantageParams,
    AggTotals,
    PolicyLossParams,
    Registry,
)

SEEDS = [0, 1, 2, 3]
GROUP_ESTIMATORS = ["grpo", "grpo_no_std", "dr_grpo", "rloo"]


# --------------------------------------------------------------------------- batch builders


def L(t: torch.Tensor):
    """Tensor -> nested Python floats/ints (the references never touch torch)."""
    return t.tolist()


def make_group_batch(seed: int, dtype=torch.float64, per_step: bool = False):
    """Rows from groups of sizes 1, 3, 4, 2, 5 in shuffled order with non-contiguous ids.

    Group 10 (size 1): single sample. Group 20 (size 3): all rewards equal to 0.1.
    Group 30 (size 4): contains one empty response. Padding holds noise the estimators
    must ignore. Returns (inputs, info dict with row sets).
    """
    rng = random.Random(seed)
    T = 7
    spec = [(10, 1), (20, 3), (30, 4), (40, 2), (50, 5)]
    rows = [(gid, k) for gid, n in spec for k in range(n)]
    rng.shuffle(rows)
    B = len(rows)
    r = [[rng.uniform(-5, 5) for _ in range(T)] for _ in range(B)]  # noise everywhere first
    m = [[0] * T for _ in range(B)]
    info = {"equal": [], "single": [], "empty": []}
    for b, (gid, k) in enumerate(rows):
        n = 0 if (gid == 30 and k == 0) else rng.randint(1, T)
        for t in range(T):
            m[b][t] = 1 if t < n else 0
        outcome_only = gid == 20 or not per_step
        for t in range(n):
            if outcome_only:
                r[b][t] = 0.0
        if n and outcome_only:
            r[b][n - 1] = 0.1 if gid == 20 else rng.choice([0.0, 1.0, rng.uniform(-1, 2)])
        if gid == 20:
            info["equal"].append(b)
        if gid == 10:
            info["single"].append(b)
        if n == 0:
            info["empty"].append(b)
    x = AdvantageInputs(
        token_rewards=torch.tensor(r, dtype=dtype),
        mask=torch.tensor(m, dtype=torch.long),
        group_ids=torch.tensor([gid for gid, _ in rows], dtype=torch.long),
    )
    return x, info


def make_rl_batch(seed: int, B: int = 5, T: int = 9, dtype=torch.float64, empty_row: bool = True):
    """Gym-style batch: per-step rewards, dones in the middle, values, last_values, some
    right padding (+ an empty row). Padding holds noise."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.randn(B, T, generator=g, dtype=dtype)
    values = torch.randn(B, T, generator=g, dtype=dtype)
    dones = (torch.rand(B, T, generator=g) < 0.25).long()
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T  # at least one full segment, bootstrapped from last_values
    dones[0, T - 1] = 0
    if B > 1:
        dones[1, T - 1] = 1  # full segment that ended exactly at the cut: no bootstrap
        lengths[1] = T
    if empty_row and B > 2:
        lengths[2] = 0
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    last_values = torch.randn(B, generator=g, dtype=dtype)
    return AdvantageInputs(
        token_rewards=rewards, mask=mask, values=values, dones=dones, last_values=last_values
    )


# --------------------------------------------------------------------------- references


def ref_scores(r, m):
    return [sum(rv for rv, mv in zip(row, mrow) if mv) for row, mrow in zip(r, m)]


def ref_group_adv(scores, ids, kind, eps):
    out = []
    for i, s in enumerate(scores):
        vals = [scores[j] for j in range(len(scores)) if ids[j] == ids[i]]
        n = len(vals)
        if n == 1 or max(vals) == min(vals):
            out.append(0.0)
            continue
        mean = sum(vals) / n
        if kind == "grpo":
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
            out.append((s - mean) / (std + eps))
        elif kind in ("grpo_no_std", "dr_grpo", "reinforce_pp_baseline"):
            out.append(s - mean)
        elif kind == "rloo":
            out.append(s - (sum(vals) - s) / (n - 1))
        else:
            raise AssertionError(kind)
    return out


def ref_broadcast(per_sample, m):
    return [[a if mv else 0.0 for mv in mrow] for a, mrow in zip(per_sample, m)]


def ref_whiten(x, m, eps=1e-8):
    vals = [v for row, mrow in zip(x, m) for v, mv in zip(row, mrow) if mv]
    n = len(vals)
    if n == 0 or max(vals) == min(vals):
        return [[0.0] * len(row) for row in x]
    mean = sum(vals) / n
    var = sum((v - mean) ** 2 for v in vals) / max(n - 1, 1)
    return [
        [(v - mean) / math.sqrt(var + eps) if mv else 0.0 for v, mv in zip(row, mrow)]
        for row, mrow in zip(x, m)
    ]


def ref_gae(r, v, m, d, last, gamma, lam):
    B, T = len(r), len(r[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in reversed(range(T)):
            if not m[b][t]:
                continue
            if d[b][t]:
                nv, na = 0.0, 0.0
            elif t == T - 1:
                nv, na = last[b], 0.0
            elif not m[b][t + 1]:
                nv, na = 0.0, 0.0
            else:
                nv, na = v[b][t + 1], adv[b][t + 1]
            delta = r[b][t] + gamma * nv - v[b][t]
            adv[b][t] = delta + gamma * lam * na
            ret[b][t] = adv[b][t] + v[b][t]
    return adv, ret


def ref_discounted(r, m, d, gamma):
    B, T = len(r), len(r[0])
    G = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in reversed(range(T)):
            if not m[b][t]:
                continue
            nxt = G[b][t + 1] if (t + 1 < T and m[b][t + 1] and not d[b][t]) else 0.0
            G[b][t] = r[b][t] + gamma * nxt
    return G


def ref_pg(lp, olp, A, m, p: PolicyLossParams, seq_level: bool):
    """Per-token loss, d loss / d logp, and metrics."""
    B, T = len(lp), len(lp[0])
    loss = [[0.0] * T for _ in range(B)]
    grad = [[0.0] * T for _ in range(B)]
    n = clipped = low = high = dual = kl = rsum = 0.0
    for b in range(B):
        valid = [t for t in range(T) if m[b][t]]
        if seq_level and valid:
            s = math.exp(sum(lp[b][t] - olp[b][t] for t in valid) / len(valid))
        for t in valid:
            lr = max(-20.0, min(20.0, lp[b][t] - olp[b][t]))
            ratio = s if seq_level else math.exp(lr)
            a = A[b][t]
            pg1 = -a * ratio
            clipped_ratio = min(max(ratio, 1 - p.clip_low), 1 + p.clip_high)
            pg2 = -a * clipped_ratio
            val = max(pg1, pg2)
            # gradient of -A*ratio w.r.t. logp_t is -A*ratio in both ppo and gspo token form
            g = -a * ratio if (pg1 >= pg2 or clipped_ratio == ratio) else 0.0
            if p.dual_clip is not None and a < 0:
                pg3 = -a * p.dual_clip
                if val > pg3:
                    dual += 1
                    val, g = pg3, 0.0
            loss[b][t], grad[b][t] = val, g
            n += 1
            clipped += pg2 > pg1
            low += pg2 > pg1 and a < 0
            high += pg2 > pg1 and a > 0
            tlr = lp[b][t] - olp[b][t]
            kl += math.exp(tlr) - 1 - tlr
            rsum += ratio
    d = max(n, 1)
    metrics = {
        "clip_frac": clipped / d,
        "clip_frac_low": low / d,
        "clip_frac_high": high / d,
        "approx_kl": kl / d,
        "ratio_mean": rsum / d,
    }
    if p.dual_clip is not None:
        metrics["dual_clip_frac"] = dual / d
    return loss, grad, metrics


def ref_aggregate(mode, l, m, total_tokens=None, total_seqs=None, norm_length=None):
    T = len(l[0])
    tok = sum(lv for row, mrow in zip(l, m) for lv, mv in zip(row, mrow) if mv)
    ntok = sum(sum(1 for mv in mrow if mv) for mrow in m)
    nseq = sum(1 for mrow in m if any(mrow))
    total_tokens = ntok if total_tokens is None else total_tokens
    total_seqs = nseq if total_seqs is None else total_seqs
    norm_length = T if norm_length is None else norm_length
    if mode == "token-mean":
        return tok / total_tokens if total_tokens else 0.0
    if mode == "seq-mean-token-mean":
        acc = 0.0
        for row, mrow in zip(l, m):
            k = sum(1 for mv in mrow if mv)
            if k:
                acc += sum(lv for lv, mv in zip(row, mrow) if mv) / k
        return acc / total_seqs if total_seqs else 0.0
    if mode == "seq-mean-token-sum-norm":
        return tok / (total_seqs * norm_length) if total_seqs else 0.0
    raise AssertionError(mode)


def ref_kl(name, lp, ref):
    out = []
    for a, b in zip(lp, ref):
        if name == "k1":
            out.append(a - b)
        elif name == "k2":
            out.append(0.5 * (a - b) ** 2)
        else:
            x = max(-20.0, min(20.0, b - a))
            out.append(max(-10.0, min(10.0, math.exp(x) - x - 1)))
    return out


def ref_entropy_and_logp(z, tok):
    finite = [v for v in z if v != -math.inf]
    mx = max(finite)
    lse = mx + math.log(sum(math.exp(v - mx) for v in finite))
    ent = -sum(math.exp(v - lse) * (v - lse) for v in finite)
    return ent, z[tok] - lse


# --------------------------------------------------------------------------- registry


def test_registry_duplicate_raises_and_keeps_first():
    reg = Registry("thing")

    @reg.register("a")
    def first():
        return 1

    with pytest.raises(ValueError, match="'a'"):

        @reg.register("a")
        def second():
            return 2

    assert reg.get("a") is first
    assert reg.names() == ["a"] and "a" in reg and "b" not in reg


def test_registry_unknown_name_lists_known():
    reg = Registry("thing")
    reg.register("zeta")(lambda: 0)
    reg.register("alpha")(lambda: 0)
    with pytest.raises(KeyError) as e:
        reg.get("nope")
    msg = str(e.value)
    assert "nope" in msg and "alpha" in msg and "zeta" in msg
    assert reg.names() == ["alpha", "zeta"]


@pytest.mark.parametrize(
    "reg,expected",
    [
        (
            ADVANTAGE_ESTIMATORS,
            {
                "gae",
                "grpo",
                "grpo_no_std",
                "dr_grpo",
                "rloo",
                "reinforce_pp",
                "reinforce_pp_baseline",
            },
        ),
        (POLICY_LOSSES, {"ppo_clip", "gspo", "cispo", "gmpo", "clip_cov", "kl_cov"}),
        (KL_ESTIMATORS, {"k1", "k2", "k3"}),
        (
            LOSS_AGGREGATIONS,
            {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"},
        ),
        (algos.ROLLOUT_CORRECTIONS, {"none", "tis", "mask"}),
    ],
)
def test_module_registries_contents(reg, expected):
    assert set(reg.names()) == expected
    for name in expected:
        assert callable(reg.get(name)) and name in reg


def test_dr_grpo_and_grpo_no_std_are_one_function_under_two_names():
    assert ADVANTAGE_ESTIMATORS.get("dr_grpo") is ADVANTAGE_ESTIMATORS.get("grpo_no_std")


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize("seed", SEEDS)
def test_masked_mean_sum_whiten_match_reference(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    m = (torch.rand(4, 6, generator=g) < 0.6).long()
    m[1] = 0
    x[m == 0] = float("inf")  # padding garbage must not leak
    xs, ms = L(x), L(m)
    valid = [v for row, mrow in zip(xs, ms) for v, mv in zip(row, mrow) if mv]
    assert algos.masked_sum(x, m).item() == pytest.approx(sum(valid))
    assert algos.masked_mean(x, m).item() == pytest.approx(sum(valid) / len(valid))
    row_means = [
        (sum(v for v, mv in zip(row, mrow) if mv) / sum(mrow)) if sum(mrow) else 0.0
        for row, mrow in zip(xs, ms)
    ]
    assert_close(algos.masked_mean(x, m, dim=-1), torch.tensor(row_means, dtype=torch.float64))
    assert_close(algos.masked_whiten(x, m), torch.tensor(ref_whiten(xs, ms), dtype=torch.float64))


def test_masked_whiten_degenerate_cases_are_exact_zero():
    m = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    x = torch.full((2, 4), 0.1, dtype=torch.float32)
    x[0, 3] = 7.0  # padding differs; valid values all equal
    out = algos.masked_whiten(x, m)
    assert torch.equal(out, torch.zeros_like(out))
    single = algos.masked_whiten(torch.tensor([[3.3, 9.0]]), torch.tensor([[1, 0]]))
    assert torch.equal(single, torch.zeros(1, 2))
    empty = algos.masked_whiten(torch.randn(2, 3), torch.zeros(2, 3))
    assert torch.equal(empty, torch.zeros(2, 3))
    assert algos.masked_mean(torch.randn(2, 3), torch.zeros(2, 3)).item() == 0.0


# --------------------------------------------------------------------------- group estimators


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", GROUP_ESTIMATORS + ["reinforce_pp_baseline"])
@pytest.mark.parametrize("per_step", [False, True])
def test_group_estimators_match_reference(name, seed, per_step):
    x, info = make_group_batch(seed, per_step=per_step)
    p = AdvantageParams(eps=1e-6)
    adv, ret = ADVANTAGE_ESTIMATORS.get(name)(x, p)
    r, m, ids = L(x.token_rewards), L(x.mask), L(x.group_ids)
    per_sample = ref_group_adv(ref_scores(r, m), ids, name, p.eps)
    expected = ref_broadcast(per_sample, m)
    if name == "reinforce_pp_baseline":
        assert_close(ret, torch.tensor(expected, dtype=torch.float64))
        expected = ref_whiten(expected, m)
    else:
        assert_close(ret, adv)
    assert_close(adv, torch.tensor(expected, dtype=torch.float64))
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert adv.shape == x.mask.shape


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", GROUP_ESTIMATORS)
def test_group_estimators_exact_zero_cases(name, seed, dtype):
    x, info = make_group_batch(seed, dtype=dtype)
    adv, ret = ADVANTAGE_ESTIMATORS.get(name)(x, AdvantageParams())
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    for kind in ("equal", "single", "empty"):
        rows = info[kind]
        assert rows, kind
        assert (adv[rows] == 0.0).all(), kind
    # padding is zero everywhere, and some non-degenerate sample is non-zero
    assert (adv[x.mask == 0] == 0).all()
    assert (adv != 0).any()


@pytest.mark.parametrize("name", GROUP_ESTIMATORS + ["reinforce_pp_baseline"])
def test_group_estimators_need_group_ids(name):
    x, _ = make_group_batch(0)
    x.group_ids = None
    with pytest.raises(ValueError, match="group_ids"):
        ADVANTAGE_ESTIMATORS.get(name)(x, AdvantageParams())


def test_grpo_known_values():
    # one group of 3 outcome scores 1, 0, 0 -> mean 1/3, unbiased std sqrt(1/3)
    r = torch.tensor([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    m = torch.tensor([[1, 1], [1, 1], [1, 0]])
    x = AdvantageInputs(r, m, group_ids=torch.tensor([5, 5, 5]))
    adv, _ = ADVANTAGE_ESTIMATORS.get("grpo")(x, AdvantageParams(eps=0.0))
    std = math.sqrt(1 / 3)
    assert adv[0, 0].item() == pytest.approx((2 / 3) / std)
    assert adv[1, 1].item() == pytest.approx((-1 / 3) / std)
    assert adv[2, 1].item() == 0.0
    rl, _ = ADVANTAGE_ESTIMATORS.get("rloo")(x, AdvantageParams())
    assert rl[0, 0].item() == pytest.approx(1.0) and rl[1, 0].item() == pytest.approx(-0.5)


# --------------------------------------------------------------------------- gae / reinforce++


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
def test_gae_matches_loop_reference(seed, gamma, lam):
    x = make_rl_batch(seed)
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams(gamma=gamma, lam=lam))
    ea, er = ref_gae(
        L(x.token_rewards), L(x.values), L(x.mask), L(x.dones), L(x.last_values), gamma, lam
    )
    assert_close(adv, torch.tensor(ea, dtype=torch.float64))
    assert_close(ret, torch.tensor(er, dtype=torch.float64))
    assert (adv[x.mask == 0] == 0).all() and (ret[x.mask == 0] == 0).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_gae_lambda_one_returns_are_monte_carlo(seed):
    """Independent check: with lam=1, returns = discounted rewards up to the episode end
    (or the segment end, plus gamma^k * last_values when the segment was cut)."""
    gamma = 0.9
    x = make_rl_batch(seed)
    _, ret = ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams(gamma=gamma, lam=1.0))
    r, m, d, last = L(x.token_rewards), L(x.mask), L(x.dones), L(x.last_values)
    T = len(r[0])
    for b in range(len(r)):
        for t in range(T):
            if not m[b][t]:
                continue
            g, k = 0.0, t
            while True:
                g += gamma ** (k - t) * r[b][k]
                if d[b][k]:
                    break
                if k == T - 1:
                    g += gamma ** (k - t + 1) * last[b]
                    break
                if not m[b][k + 1]:
                    break
                k += 1
            assert ret[b, t].item() == pytest.approx(g, abs=1e-9)


def test_gae_hand_computed_llm_and_gym():
    # right-padded LLM response: last valid token is terminal even though last_values exists
    x = AdvantageInputs(
        token_rewards=torch.tensor([[0.0, 1.0, 123.0]], dtype=torch.float64),
        mask=torch.tensor([[1, 1, 0]]),
        values=torch.tensor([[0.5, 0.2, 9.0]], dtype=torch.float64),
        last_values=torch.tensor([5.0], dtype=torch.float64),
    )
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams())
    assert_close(adv, torch.tensor([[0.5, 0.8, 0.0]], dtype=torch.float64))
    assert_close(ret, torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64))
    # gym segment: episode ends at t=1, a new one is cut at t=3 and bootstrapped
    x = AdvantageInputs(
        token_rewards=torch.ones(1, 4, dtype=torch.float64),
        mask=torch.ones(1, 4),
        values=torch.zeros(1, 4, dtype=torch.float64),
        dones=torch.tensor([[0, 1, 0, 0]]),
        last_values=torch.tensor([10.0], dtype=torch.float64),
    )
    adv, _ = ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams(gamma=0.5, lam=1.0))
    assert_close(adv, torch.tensor([[1.5, 1.0, 4.0, 6.0]], dtype=torch.float64))
    x.dones = torch.tensor([[0, 1, 0, 1]])  # ended at the cut: no bootstrap
    adv, _ = ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams(gamma=0.5, lam=1.0))
    assert_close(adv, torch.tensor([[1.5, 1.0, 1.5, 1.0]], dtype=torch.float64))


def test_gae_needs_values_and_detaches():
    x = make_rl_batch(0)
    v = x.values
    x.values = None
    with pytest.raises(ValueError, match="values"):
        ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams())
    x.values = v.clone().requires_grad_(True)
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams())
    assert not adv.requires_grad and not ret.requires_grad


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_matches_reference(seed, gamma):
    x = make_rl_batch(seed)
    adv, ret = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(x, AdvantageParams(gamma=gamma))
    G = ref_discounted(L(x.token_rewards), L(x.mask), L(x.dones), gamma)
    assert_close(ret, torch.tensor(G, dtype=torch.float64))
    assert_close(adv, torch.tensor(ref_whiten(G, L(x.mask)), dtype=torch.float64))


def test_reinforce_pp_ignores_last_values_and_whitens_constant_to_zero():
    x = make_rl_batch(1)
    x.last_values = x.last_values + 100.0
    a1, r1 = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(x, AdvantageParams(gamma=0.9))
    x.last_values = None
    a2, r2 = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(x, AdvantageParams(gamma=0.9))
    assert torch.equal(a1, a2) and torch.equal(r1, r2)
    # outcome 0.1 on every (single-token) response: all returns equal -> exactly 0
    x = AdvantageInputs(torch.full((4, 3), 0.1), torch.tensor([[1, 0, 0]] * 3 + [[0, 0, 0]]))
    adv, _ = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(x, AdvantageParams())
    assert torch.equal(adv, torch.zeros(4, 3))


@pytest.mark.parametrize(
    "name",
    ["gae", "grpo", "grpo_no_std", "dr_grpo", "rloo", "reinforce_pp", "reinforce_pp_baseline"],
)
def test_every_estimator_handles_empty_rows_and_empty_batch(name):
    assert name in ADVANTAGE_ESTIMATORS
    x = make_rl_batch(3)
    x.group_ids = torch.tensor([0, 0, 1, 1, 2])
    adv, ret = ADVANTAGE_ESTIMATORS.get(name)(x, AdvantageParams(gamma=0.9, lam=0.9))
    assert adv.shape == ret.shape == x.mask.shape
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv[x.mask == 0] == 0).all() and (ret[x.mask == 0] == 0).all()
    assert (adv[2] == 0).all()  # row 2 is an empty response
    x.mask = torch.zeros_like(x.mask)
    adv, ret = ADVANTAGE_ESTIMATORS.get(name)(x, AdvantageParams())
    assert torch.equal(adv, torch.zeros_like(adv)) and torch.equal(ret, torch.zeros_like(ret))


def test_estimator_names_covered_by_empty_row_test():
    # keeps the parametrised list above honest when an estimator is added
    assert set(ADVANTAGE_ESTIMATORS.names()) == {
        "gae",
        "grpo",
        "grpo_no_std",
        "dr_grpo",
        "rloo",
        "reinforce_pp",
        "reinforce_pp_baseline",
    }


# --------------------------------------------------------------------------- policy losses


def make_pg_batch(seed, B=4, T=6):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    # per-sequence drift so that sequence-level (gspo) ratios are clipped (rows 0, 1) or not (row 2)
    drift = torch.tensor([[0.5], [-0.4], [0.0], [0.0]], dtype=torch.float64)
    lp = old + drift + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) < 0.8).long()
    mask[:, 0] = 1
    mask[B - 1] = 0  # empty response
    return lp, old, adv, mask


PG_PARAMS = [
    PolicyLossParams(),
    PolicyLossParams(clip_low=0.2, clip_high=0.28),
    PolicyLossParams(clip_low=0.1, clip_high=0.3, dual_clip=3.0),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p", PG_PARAMS, ids=["sym", "clip_higher", "dual"])
@pytest.mark.parametrize("name", ["ppo_clip", "gspo"])
def test_policy_loss_value_grad_metrics(name, p, seed):
    lp, old, adv, mask = make_pg_batch(seed)
    if name == "gspo":
        # one sign per sequence so rows 0 and 1 clip; magnitudes vary per token so the
        # per-token gradient differs from that of a plain exp(mean log-ratio)
        sign = torch.tensor([[1.0], [-1.0], [1.0], [1.0]], dtype=torch.float64)
        adv = (
            adv[:, :1].abs()
            * sign
            * (
                0.5
                + torch.rand(
                    adv.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
                )
            )
        )
    lp = lp.requires_grad_(True)
    loss, metrics = POLICY_LOSSES.get(name)(lp, old, adv, mask, p)
    e_loss, e_grad, e_metrics = ref_pg(
        L(lp.detach()), L(old), L(adv), L(mask), p, seq_level=name == "gspo"
    )
    assert_close(loss, torch.tensor(e_loss, dtype=torch.float64))
    (grad,) = torch.autograd.grad(loss.sum(), lp)
    assert_close(grad, torch.tensor(e_grad, dtype=torch.float64))
    assert set(metrics) == set(e_metrics)
    for k, v in e_metrics.items():
        assert not metrics[k].requires_grad and metrics[k].dim() == 0
        assert metrics[k].item() == pytest.approx(v, abs=1e-9), k
    assert (loss[mask == 0] == 0).all() and (grad[mask == 0] == 0).all()
    assert (grad != 0).any()  # gradient actually flows
    assert 0 < metrics["clip_frac"].item() < 1  # the batch exercises both branches


def test_gspo_gradient_is_per_token():
    # s_i = exp(mean(0.05, -0.05, 0)) = 1, unclipped: d loss / d logp_t = -A_t * s_i.
    # A plain exp(mean log-ratio) would spread the gradient: -(2 + 1 - 1) / 3 on every token.
    lp = torch.tensor([[-1.0, -2.0, -3.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-1.05, -1.95, -3.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0]])
    adv = torch.tensor([[2.0, 1.0, -1.0, 5.0]], dtype=torch.float64)
    loss, _ = POLICY_LOSSES.get("gspo")(lp, old, adv, mask, PolicyLossParams())
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert_close(g, torch.tensor([[-2.0, -1.0, 1.0, 0.0]], dtype=torch.float64))
    assert_close(loss, torch.tensor([[-2.0, -1.0, 1.0, 0.0]], dtype=torch.float64))


def test_dual_clip_bounds_negative_advantage_loss():
    lp = torch.tensor([[0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    old = torch.tensor([[-3.0, -3.0, -0.01, -3.0]], dtype=torch.float64)  # ratio ~20, ~20, ~1, ~20
    adv = torch.tensor([[-1.0, -2.0, -1.0, 1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4)
    free, _ = POLICY_LOSSES.get("ppo_clip")(lp, old, adv, mask, PolicyLossParams())
    assert free[0, 0].item() == pytest.approx(math.exp(3.0))  # unbounded without dual clip
    p = PolicyLossParams(dual_clip=3.0)
    loss, metrics = POLICY_LOSSES.get("ppo_clip")(lp, old, adv, mask, p)
    neg = adv < 0
    assert (loss[neg] <= (-3.0 * adv)[neg] + 1e-12).all()
    assert loss[0, 0].item() == pytest.approx(3.0) and loss[0, 1].item() == pytest.approx(6.0)
    assert loss[0, 2].item() == pytest.approx(free[0, 2].item())  # in range: untouched
    assert loss[0, 3].item() == pytest.approx(free[0, 3].item())  # A > 0: untouched
    assert metrics["dual_clip_frac"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="dual_clip"):
        POLICY_LOSSES.get("ppo_clip")(lp, old, adv, mask, PolicyLossParams(dual_clip=1.0))


@pytest.mark.parametrize("name", ["ppo_clip", "gspo"])
def test_policy_losses_finite_on_extreme_log_ratio(name):
    # log-ratio 800 would overflow exp even in float64; the [-20, 20] clamp keeps it finite
    lp = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-800.0, 800.0]], dtype=torch.float64)
    adv = torch.tensor([[-1.0, 1.0]], dtype=torch.float64)
    loss, metrics = POLICY_LOSSES.get(name)(lp, old, adv, torch.ones(1, 2), PolicyLossParams())
    (g,) = torch.autograd.grad(loss.sum(), lp)
    assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    assert all(torch.isfinite(v) for v in metrics.values())
    if name == "ppo_clip":
        assert loss[0, 0].item() == pytest.approx(math.exp(20.0))


def test_policy_losses_finite_on_all_empty_mask():
    lp, old, adv, _ = make_pg_batch(0)
    mask = torch.zeros_like(lp)
    for name in POLICY_LOSSES.names():
        loss, metrics = POLICY_LOSSES.get(name)(
            lp.requires_grad_(True), old, adv, mask, PolicyLossParams()
        )
        assert torch.equal(loss.detach(), torch.zeros_like(loss))
        assert all(torch.isfinite(v) for v in metrics.values())
        (g,) = torch.autograd.grad(loss.sum(), lp)
        assert torch.isfinite(g).all()


# --------------------------------------------------------------------------- aggregation

AGG_MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def make_agg_batch(seed, B=8, T=7):
    g = torch.Generator().manual_seed(seed)
    loss = torch.randn(B, T, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) < 0.6).long()
    mask[2] = 0
    mask[5] = 0
    loss[mask == 0] = float("nan")  # padding garbage
    return loss, mask


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_matches_reference(mode, seed):
    loss, mask = make_agg_batch(seed)
    got = LOSS_AGGREGATIONS.get(mode)(loss, mask)
    assert got.dim() == 0
    assert got.item() == pytest.approx(ref_aggregate(mode, L(loss), L(mask)), rel=1e-9)
    kw = dict(total_tokens=50.0, total_seqs=11, norm_length=13)
    got = LOSS_AGGREGATIONS.get(mode)(loss, mask, AggTotals(50.0, 11, 13))
    assert got.item() == pytest.approx(ref_aggregate(mode, L(loss), L(mask), **kw), rel=1e-9)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_microbatch_sum_equals_minibatch(mode, seed):
    loss, mask = make_agg_batch(seed)
    loss.requires_grad_(True)
    agg = LOSS_AGGREGATIONS.get(mode)
    whole = agg(loss, mask)
    totals = AggTotals.of(mask)
    assert totals == AggTotals(mask.sum().item(), int((mask.sum(-1) > 0).sum()), mask.shape[-1])
    parts = []
    for lo, hi in [(0, 3), (3, 4), (4, 8)]:
        m = mask[lo:hi]
        width = int(m.nonzero()[:, 1].max()) + 1 if m.any() else 1  # trim padding columns
        parts.append(agg(loss[lo:hi, :width], m[:, :width], totals))
    total = torch.stack(parts).sum()
    assert total.item() == pytest.approx(whole.item(), rel=1e-12)
    (g_whole,) = torch.autograd.grad(whole, loss)
    (g_parts,) = torch.autograd.grad(total, loss)
    assert_close(g_parts, g_whole)
    assert torch.isfinite(g_whole).all()
    # the parts' own totals (untrimmed, as each rank builds them) add up to the whole's
    parts_totals = [AggTotals.of(mask[lo:hi]) for lo, hi in [(0, 3), (3, 4), (4, 8)]]
    assert sum(parts_totals[1:], parts_totals[0]) == totals


@pytest.mark.parametrize("mode", AGG_MODES)
def test_aggregation_all_masked_is_zero_with_finite_grad(mode):
    loss = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(3, 4)
    out = LOSS_AGGREGATIONS.get(mode)(loss, mask)
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, loss)
    assert torch.equal(g, torch.zeros_like(g))
    out = LOSS_AGGREGATIONS.get(mode)(loss, mask, AggTotals(0.0, 0.0, 4))
    assert out.item() == 0.0


def test_seq_mean_token_mean_weights_sequences_equally():
    loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert LOSS_AGGREGATIONS.get("seq-mean-token-mean")(loss, mask).item() == pytest.approx(3.0)
    assert LOSS_AGGREGATIONS.get("token-mean")(loss, mask).item() == pytest.approx(9.0 / 5)
    assert LOSS_AGGREGATIONS.get("seq-mean-token-sum-norm")(loss, mask).item() == pytest.approx(
        9.0 / 8
    )


# --------------------------------------------------------------------------- KL


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", ["k1", "k2", "k3"])
def test_kl_estimators_match_reference(name, seed):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 4
    ref = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 4
    lp[0, 0], ref[0, 0] = -40.0, 0.0  # exp(40) would be huge: clamps must hold
    lp[0, 1], ref[0, 1] = 0.0, -40.0
    got = KL_ESTIMATORS.get(name)(lp, ref)
    exp = [ref_kl(name, a, b) for a, b in zip(L(lp), L(ref))]
    assert_close(got, torch.tensor(exp, dtype=torch.float64))
    assert torch.isfinite(got).all()


def test_k3_clamped_and_nonnegative():
    lp = torch.tensor([-50.0, 0.0, -1.0, 0.0, -1.3])
    ref = torch.tensor([0.0, -50.0, -1.0, -5.0, -0.9])
    k3 = KL_ESTIMATORS.get("k3")(lp, ref)
    assert k3[0].item() == 10.0 and k3[1].item() == 10.0  # result clamp
    assert k3[2].item() == 0.0 and k3[3].item() == pytest.approx(math.exp(-5.0) + 4.0)
    assert (k3 >= 0).all()


def test_kl_penalty_rewards():
    r = torch.tensor([[0.0, 1.0, 7.0]], dtype=torch.float64)
    kl = torch.tensor([[0.5, -0.2, 3.0]], dtype=torch.float64, requires_grad=True)
    out = algos.kl_penalty_rewards(r, kl, 0.1, torch.tensor([[1, 1, 0]]))
    assert_close(out, torch.tensor([[-0.05, 1.02, 7.0]], dtype=torch.float64))
    assert not out.requires_grad


# --------------------------------------------------------------------------- plain functions


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_entropy_and_logprobs_match_reference(seed, scale):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * scale
    logits[0, 0, 1] = -math.inf  # banned token
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    tokens[0, 0] = 0
    ent = algos.entropy_from_logits(logits)
    lp = algos.logprobs_from_logits(logits, tokens)
    e_ent, e_lp = [], []
    for b in range(2):
        for t in range(3):
            e, l = ref_entropy_and_logp(L(logits[b, t]), int(tokens[b, t]))
            e_ent.append(e)
            e_lp.append(l)
    assert_close(ent.flatten(), torch.tensor(e_ent, dtype=torch.float64))
    assert_close(lp.flatten(), torch.tensor(e_lp, dtype=torch.float64))
    x = logits.clone().requires_grad_(True)
    (gr,) = torch.autograd.grad(
        algos.entropy_from_logits(x).sum() + algos.logprobs_from_logits(x, tokens).sum(), x
    )
    assert torch.isfinite(gr).all()


def test_logprobs_from_bf16_are_float32():
    logits = torch.randn(2, 3, 11).to(torch.bfloat16)
    tokens = torch.randint(0, 11, (2, 3))
    lp = algos.logprobs_from_logits(logits, tokens)
    assert lp.dtype == torch.float32
    expected = torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]
    assert_close(lp, expected)
    assert algos.entropy_from_logits(logits).dtype == torch.float32


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("clip", [None, 0.2])
def test_value_loss_matches_reference(seed, clip):
    g = torch.Generator().manual_seed(seed)
    v, old, ret = (torch.randn(3, 5, generator=g, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(3, 5, generator=g) < 0.7).long()
    got = algos.value_loss(v, old, ret, mask, clip)
    exp = []
    for vr, orow, rr, mr in zip(L(v), L(old), L(ret), L(mask)):
        row = []
        for a, o, R, mv in zip(vr, orow, rr, mr):
            if not mv:
                row.append(0.0)
                continue
            l = (a - R) ** 2
            if clip is not None:
                vc = o + max(-clip, min(clip, a - o))
                l = max(l, (vc - R) ** 2)
            row.append(0.5 * l)
        exp.append(row)
    assert_close(got, torch.tensor(exp, dtype=torch.float64))
    if clip is not None:  # clipping must bite somewhere in this batch
        assert not torch.allclose(got, algos.value_loss(v, old, ret, mask, None))


@pytest.mark.parametrize("seed", SEEDS)
def test_explained_variance_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    ret = torch.randn(3, 6, generator=g, dtype=torch.float64)
    v = ret + 0.5 * torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = (torch.rand(3, 6, generator=g) < 0.7).long()
    mask[0, :2] = 1
    R = [x for row, mr in zip(L(ret), L(mask)) for x, mv in zip(row, mr) if mv]
    D = [x - y for rr, vr, mr in zip(L(ret), L(v), L(mask)) for x, y, mv in zip(rr, vr, mr) if mv]

    def var(xs):
        mu = sum(xs) / len(xs)
        return sum((x - mu) ** 2 for x in xs) / len(xs)

    assert algos.explained_variance(v, ret, mask).item() == pytest.approx(1 - var(D) / var(R))
    assert algos.explained_variance(ret, ret, mask).item() == pytest.approx(1.0)
    const = torch.ones(3, 6)
    assert algos.explained_variance(const, const, mask).item() == 1.0
    assert algos.explained_variance(const * 2, const, mask).item() == 1.0  # constant offset
    assert algos.explained_variance(torch.randn(3, 6), const, torch.ones(3, 6)).item() == 0.0
