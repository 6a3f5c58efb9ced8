"""Off-policy correction (rollout IS), interior-gap GAE, empty-response rewards, DAPO overlong
shaping, the adaptive KL controller and value-clip metrics, against plain-loop references."""

from __future__ import annotations

import math
import random

import pytest
import torch
from torch.testing import assert_close

from rlhf import algos
from rlhf.algos import ADVANTAGE_ESTIMATORS, ROLLOUT_CORRECTIONS, AdvantageInputs, AdvantageParams

SEEDS = [0, 1, 2, 3]


def L(t):
    return t.tolist()


# --------------------------------------------------------------------------- rollout IS


def make_is_batch(seed, B=6, T=8):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    # per-row drift: some rows far off-policy in either direction
    drift = torch.tensor([0.0, 1.5, -1.5, 0.3, -0.2, 0.0], dtype=torch.float64)[:B, None]
    rollout = (
        old
        - drift * torch.rand(B, T, generator=g, dtype=torch.float64)
        - 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    )
    mask = (torch.rand(B, T, generator=g) < 0.8).long()
    mask[:, 0] = 1
    rollout[1, 0], rollout[2, 0] = old[1, 0] - 1.5, old[2, 0] + 1.5  # token ratios 4.5 and 0.22
    mask[B - 1] = 0  # empty response
    return old, rollout, mask


def ref_is(kind, old, ro, m, level, cap):
    B, T = len(old), len(old[0])
    w = [[0.0] * T for _ in range(B)]
    changed = n = wsum = 0
    for b in range(B):
        ts = [t for t in range(T) if m[b][t]]
        seq = sum(old[b][t] - ro[b][t] for t in ts)
        for t in ts:
            lr = seq if level == "sequence" else old[b][t] - ro[b][t]
            r = math.exp(max(-20, min(20, lr)))
            if kind == "none":
                val, ch = 1.0, False
            elif kind == "tis":
                val, ch = min(r, cap), r > cap
            else:
                ch = r > cap or r < 1 / cap
                val = 0.0 if ch else r
            w[b][t] = val
            n += 1
            changed += ch
            wsum += val if kind != "none" else r
    return w, {"algo/rollout_is_weight_mean": wsum / n, "algo/rollout_is_clipped_frac": changed / n}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("kind", ["none", "tis", "mask"])
def test_rollout_corrections_match_reference(kind, level, seed):
    old, ro, mask = make_is_batch(seed)
    w, metrics = ROLLOUT_CORRECTIONS.get(kind)(old, ro, mask, level, 2.0)
    e_w, e_m = ref_is(kind, L(old), L(ro), L(mask), level, 2.0)
    assert_close(w, torch.tensor(e_w, dtype=torch.float64))
    assert set(metrics) == set(e_m)
    for k, v in e_m.items():
        assert metrics[k] == pytest.approx(v, abs=1e-12), k
    assert not w.requires_grad and (w[mask == 0] == 0).all()
    if kind != "none":
        assert 0 < metrics["algo/rollout_is_clipped_frac"] < 1  # the batch exercises both branches
    if level == "sequence":  # one weight per sequence
        for b in range(len(w)):
            vals = w[b][mask[b] == 1]
            assert vals.numel() == 0 or (vals == vals[0]).all()


def test_rollout_corrections_on_policy_are_ones_and_bad_args_raise():
    old, _, mask = make_is_batch(0)
    for kind in ("none", "tis", "mask"):
        for level in ("token", "sequence"):
            w, m = ROLLOUT_CORRECTIONS.get(kind)(old, old.clone(), mask, level, 2.0)
            assert torch.equal(w, mask.to(w.dtype)) and m["algo/rollout_is_clipped_frac"] == 0
    with pytest.raises(ValueError, match="level"):
        ROLLOUT_CORRECTIONS.get("tis")(old, old, mask, "batch", 2.0)
    with pytest.raises(ValueError, match="cap"):
        ROLLOUT_CORRECTIONS.get("mask")(old, old, mask, "token", 1.0)
    # extreme log-ratios stay finite
    w, _ = ROLLOUT_CORRECTIONS.get("tis")(old + 500, old, mask, "sequence", 2.0)
    assert torch.isfinite(w).all()


# --------------------------------------------------------------------------- interior gaps


def ref_gae_gaps(r, v, m, d, last, gamma, lam):
    """Loop reference: value and advantage flow from the NEXT VALID position; trailing padding
    is terminal; a valid last position bootstraps from last_values."""
    B, T = len(r), len(r[0])
    adv = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in reversed(range(T)):
            if not m[b][t]:
                continue
            nxt = next((u for u in range(t + 1, T) if m[b][u]), None)
            if d[b][t]:
                nv, na = 0.0, 0.0
            elif nxt is not None:
                nv, na = v[b][nxt], adv[b][nxt]
            elif t == T - 1:
                nv, na = last[b], 0.0
            else:
                nv, na = 0.0, 0.0
            adv[b][t] = r[b][t] + gamma * nv - v[b][t] + gamma * lam * na
    ret = [[adv[b][t] + v[b][t] if m[b][t] else 0.0 for t in range(T)] for b in range(B)]
    return adv, ret


def make_gap_batch(seed, B=6, T=12):
    """Multi-turn masks: turns of model tokens separated by environment tokens (0s), with
    trailing padding on some rows; a row ending at T-1 with a valid token (bootstrapped);
    an empty row; dones on a few rows."""
    rng = random.Random(seed)
    m = []
    for b in range(B):
        row = []
        while len(row) < T:
            row += [1] * rng.randint(1, 3) + [0] * rng.randint(1, 3)
        row = row[:T]
        if b % 2:
            cut = rng.randint(T // 2, T - 1)
            row = row[:cut] + [0] * (T - cut)
        m.append(row)
    m[0][T - 1] = 1
    m[B - 1] = [0] * T
    g = torch.Generator().manual_seed(seed)
    d = (torch.rand(B, T, generator=g) < 0.1).long()
    d[0, T - 1] = 0
    return AdvantageInputs(
        token_rewards=torch.randn(B, T, generator=g, dtype=torch.float64),
        mask=torch.tensor(m),
        values=torch.randn(B, T, generator=g, dtype=torch.float64),
        dones=d,
        last_values=torch.randn(B, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.9, 0.8)])
def test_gae_carries_value_across_interior_gaps(seed, gamma, lam):
    x = make_gap_batch(seed)
    assert any(0 in row[: max(i for i, v in enumerate(row) if v)] for row in L(x.mask) if any(row))
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(x, AdvantageParams(gamma=gamma, lam=lam))
    e_adv, e_ret = ref_gae_gaps(
        L(x.token_rewards), L(x.values), L(x.mask), L(x.dones), L(x.last_values), gamma, lam
    )
    assert_close(adv, torch.tensor(e_adv, dtype=torch.float64))
    assert_close(ret, torch.tensor(e_ret, dtype=torch.float64))


def test_gae_gap_hand_computed():
    # turn 1: positions 0,1; environment tokens 2,3; turn 2: position 4; padding 5.
    # gamma = lam = 1, outcome reward 1 on the last model token, values v.
    v = torch.tensor([[0.1, 0.2, 9.0, 9.0, 0.5, 9.0]], dtype=torch.float64)
    r = torch.tensor([[0, 0, 5.0, 5.0, 1.0, 0]], dtype=torch.float64)  # env-token rewards ignored
    m = torch.tensor([[1, 1, 0, 0, 1, 0]])
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(AdvantageInputs(r, m, values=v), AdvantageParams())
    # Monte Carlo return is 1 for every model token (the old code stopped at position 1: 0.0 - 0.2)
    assert_close(ret, torch.tensor([[1.0, 1.0, 0, 0, 1.0, 0]], dtype=torch.float64))
    assert_close(adv, torch.tensor([[0.9, 0.8, 0, 0, 0.5, 0]], dtype=torch.float64))


def ref_discounted_gaps(r, m, d, gamma):
    B, T = len(r), len(r[0])
    G = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in reversed(range(T)):
            if not m[b][t]:
                continue
            nxt = next((u for u in range(t + 1, T) if m[b][u]), None)
            G[b][t] = r[b][t] + (0.0 if d[b][t] or nxt is None else gamma * G[b][nxt])
    return G


@pytest.mark.parametrize("seed", SEEDS)
def test_reinforce_pp_returns_carry_across_gaps(seed):
    x = make_gap_batch(seed)
    _, g = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(x, AdvantageParams(gamma=0.9))
    assert_close(
        g,
        torch.tensor(
            ref_discounted_gaps(L(x.token_rewards), L(x.mask), L(x.dones), 0.9), dtype=torch.float64
        ),
    )


# --------------------------------------------------------------------------- empty responses


@pytest.mark.parametrize(
    "name", ["grpo", "grpo_no_std", "dr_grpo", "rloo", "reinforce_pp_baseline"]
)
def test_empty_response_reward_counts_in_the_group(name):
    # Group 0: an empty response penalised with -1 and two answers scoring 1 and 0.
    mask = torch.tensor([[0, 0, 0], [1, 1, 0], [1, 0, 0]])
    tok = torch.tensor([[0, 0, 0], [0, 1.0, 0], [0.0, 0, 0]], dtype=torch.float64)
    seq = torch.tensor([-1.0, 1.0, 0.0], dtype=torch.float64)
    gid = torch.tensor([0, 0, 0])
    fn = ADVANTAGE_ESTIMATORS.get(name)
    adv, raw = fn(AdvantageInputs(tok, mask, group_ids=gid, seq_rewards=seq), AdvantageParams())
    old, old_raw = fn(AdvantageInputs(tok, mask, group_ids=gid), AdvantageParams())
    scores, n = [-1.0, 1.0, 0.0], 3
    mean = sum(scores) / n
    if name == "rloo":
        expect = [s - (sum(scores) - s) / (n - 1) for s in scores]
    elif name == "grpo":
        std = math.sqrt(sum((s - mean) ** 2 for s in scores) / (n - 1))
        expect = [(s - mean) / (std + 1e-6) for s in scores]
    else:
        expect = [s - mean for s in scores]
    target = raw if name == "reinforce_pp_baseline" else adv  # the baseline one whitens after
    assert target[1, 0].item() == pytest.approx(expect[1]) and target[2, 0].item() == pytest.approx(
        expect[2]
    )
    assert (adv[0] == 0).all()  # the empty row has no token to train
    # before the fix the -1 was dropped: the empty response counted as reward 0
    assert not torch.allclose(raw, old_raw)


def test_seq_rewards_ignored_for_non_empty_rows_and_shape_checked():
    mask = torch.tensor([[1, 1], [1, 0]])
    tok = torch.tensor([[0, 1.0], [0.0, 0]])
    x = AdvantageInputs(
        tok, mask, group_ids=torch.tensor([0, 0]), seq_rewards=torch.tensor([7.0, 7.0])
    )
    adv, _ = ADVANTAGE_ESTIMATORS.get("grpo_no_std")(x, AdvantageParams())
    assert_close(adv, torch.tensor([[0.5, 0.5], [-0.5, 0.0]]))
    x.seq_rewards = torch.zeros(3)
    with pytest.raises(ValueError, match="seq_rewards"):
        ADVANTAGE_ESTIMATORS.get("grpo")(x, AdvantageParams())


# --------------------------------------------------------------------------- DAPO overlong


def ref_overlong(L_, max_len, buf, pen):
    if buf <= 0 or L_ <= max_len - buf:
        return 0.0
    if L_ <= max_len:
        return (max_len - buf - L_) / buf * pen
    return -pen


def test_overlong_penalty_matches_dapo_formula():
    lengths = torch.tensor([0, 3, 4, 5, 6, 7, 8, 9, 20])
    for buf in (0, 1, 4, 8):
        got = algos.overlong_penalty(lengths, max_len=8, buffer=buf, penalty=1.0)
        assert got.tolist() == pytest.approx([ref_overlong(int(n), 8, buf, 1.0) for n in lengths])
    got = algos.overlong_penalty(lengths, max_len=8, buffer=4, penalty=0.5)
    assert got.tolist() == pytest.approx([0, 0, 0, -0.125, -0.25, -0.375, -0.5, -0.5, -0.5])


def test_add_sequence_reward_on_last_valid_token_and_empty_rows_unchanged():
    tok = torch.zeros(3, 5)
    mask = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 1, 1, 1]])  # row 2 has a gap
    out = algos.add_sequence_reward(tok, mask, torch.tensor([-0.5, -1.0, 2.0]))
    assert out.tolist() == [[0, 0, -0.5, 0, 0], [0] * 5, [0, 0, 0, 0, 2.0]]


# ------------------------------------------------------------------ KL controller / value clip


def test_adaptive_kl_controller_matches_ziegler_update():
    ctl = algos.KLController(0.1, target=0.05, horizon=100)
    coef = 0.1
    for kl, n in [(0.1, 10), (0.05, 10), (0.0, 20), (0.06, 5)]:
        err = min(max(kl / 0.05 - 1, -0.2), 0.2)
        coef *= 1 + err * n / 100
        assert ctl.update(kl, n) == pytest.approx(coef)
    state = ctl.state_dict()
    other = algos.KLController(0.1, target=0.05, horizon=100)
    other.load_state_dict(state)
    assert other.value == ctl.value
    fixed = algos.KLController(0.1)
    assert fixed.update(5.0, 100) == 0.1
    with pytest.raises(ValueError):
        algos.KLController(0.1, target=0.0)


def test_value_clip_fraction():
    v = torch.tensor([[1.0, 0.0, 0.5, 9.0]])
    old = torch.zeros(1, 4)
    ret = torch.tensor([[1.0, 1.0, -1.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    # token 0: v moved +1 past clip 0.2 toward the return -> clipped branch (worse) taken
    # token 1: v unchanged -> not clipped; token 2: moved +0.5 away from the return ->
    # unclipped worse
    frac = algos.value_clip_fraction(v, old, ret, mask, 0.2)
    assert frac.item() == pytest.approx(1 / 3)
    assert algos.value_clip_fraction(v, old, ret, mask, None).item() == 0.0


# --------------------------------------------------------------------------- constructed samples


def _samples():
    """Two prompts x 3 answers: (response length, finish_reason, reward). max_new_tokens = 6."""
    from rlhf.batch import Sample

    spec = [
        (2, "stop", 1.0),
        (5, "stop", 1.0),
        (6, "length", 0.0),  # group 0
        (0, "stop", -1.0),
        (3, "stop", 0.0),
        (6, "length", 1.0),
    ]  # group 1: an empty response
    return [
        Sample(
            group_id=i // 3,
            prompt_ids=[1, 5, 6],
            response_ids=list(range(7, 7 + n)),
            rollout_logprobs=[-1.0] * n,
            finish_reason=fr,
            reward=r,
        )
        for i, (n, fr, r) in enumerate(spec)
    ]


def _driver(**algo):
    """What Trainer.compute_advantages reads from the trainer, without Ray or roles."""
    from types import SimpleNamespace

    from rlhf.config import AlgoConfig

    # As validate() resolves it: rollout_is "auto" is "none" on-policy.
    a = AlgoConfig(overlong_max_len=6, **{"rollout_is": "none", **algo})
    return SimpleNamespace(
        algo=a,
        advantage_fn=ADVANTAGE_ESTIMATORS.get(a.advantage),
        advantage_params=AdvantageParams(),
        kl_estimator=algos.KL_ESTIMATORS.get("k3"),
        kl_ctrl=algos.KLController(a.kl_coef, a.kl_target, a.kl_horizon),
    )


def test_collate_marks_truncation_and_keeps_sequence_rewards():
    from rlhf.batch import collate

    b = collate(_samples())
    assert b.truncated.tolist() == [0, 0, 1, 0, 0, 1]
    assert b.seq_rewards.tolist() == [1.0, 1.0, 0.0, -1.0, 0.0, 1.0]
    assert b.action_mask.sum(-1).tolist() == [2, 5, 6, 0, 3, 6]
    assert b.is_weights is None


def test_driver_overlong_shaping_and_truncation_mask_on_constructed_samples():
    from rlhf.batch import collate
    from rlhf.trainer import Trainer

    b = collate(_samples())
    b.old_logprobs = b.rollout_logprobs.clone()
    drv = _driver(
        advantage="grpo_no_std", overlong_buffer=2, overlong_penalty=1.0, mask_truncated=True
    )
    out = Trainer.compute_advantages(drv, b)
    # penalties: L=5 -> -0.5 (inside the 2-token buffer), L=6 -> -1, others 0; the empty
    # response keeps its -1 through seq_rewards
    scores = [1.0, 0.5, -1.0, -1.0, 0.0, 0.0]
    per_row = [
        s - sum(scores[g * 3 : g * 3 + 3]) / 3 for g in (0, 1) for s in scores[g * 3 : g * 3 + 3]
    ]
    lengths = [2, 5, 6, 0, 3, 6]
    for i, (a, n) in enumerate(zip(per_row, lengths)):
        row = out.advantages[i][b.action_mask[i] == 1]
        assert row.numel() == n and torch.allclose(row, torch.full_like(row, a)), i
    # truncated rows leave the loss mask; their rewards still shaped the baselines above
    assert out.action_mask.sum(-1).tolist() == [2, 5, 0, 0, 3, 0]
    assert drv.advantage_metrics["algo/overlong_penalty_mean"] == pytest.approx(-2.5 / 6)
    assert drv.advantage_metrics["algo/truncated_masked_frac"] == pytest.approx(2 / 6)
    assert out.is_weights is None  # rollout_is=none


def test_driver_rollout_is_and_adaptive_kl():
    from rlhf.batch import collate
    from rlhf.trainer import Trainer

    b = collate(_samples())
    b.old_logprobs = b.rollout_logprobs + 1.0 * b.action_mask  # learner thinks e^1 likelier
    b.ref_logprobs = b.old_logprobs - 0.5 * b.action_mask
    drv = _driver(
        rollout_is="tis",
        rollout_is_cap=2.0,
        kl_coef=0.1,
        kl_in_reward=True,
        kl_target=0.01,
        kl_horizon=6,
    )
    out = Trainer.compute_advantages(drv, b)
    assert torch.equal(out.is_weights, 2.0 * b.action_mask)  # e^1 > cap 2 -> truncated
    assert drv.advantage_metrics["algo/rollout_is_clipped_frac"] == 1.0
    assert drv.advantage_metrics["algo/kl_coef"] == 0.1  # the coefficient used this step
    assert drv.kl_ctrl.value == pytest.approx(0.1 * (1 + 0.2 * 6 / 6))  # KL above target: raised
