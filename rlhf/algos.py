"""Pure tensor math of RL post-training: advantages, policy losses, KL, loss aggregation.

This module owns every formula the learner applies to a batch of rollouts, as small
pure torch functions in the style of veRL's ``core_algos``:

* ``ADVANTAGE_ESTIMATORS`` -- rewards (+ critic values) -> (advantages, returns)
* ``POLICY_LOSSES``        -- log-probs + advantages -> per-token loss + metrics
* ``KL_ESTIMATORS``        -- per-token estimates of KL(pi || ref)
* ``LOSS_AGGREGATIONS``    -- per-token loss [B,T] -> scalar, micro-batch aware
* ``ROLLOUT_CORRECTIONS``  -- learner-old vs rollout logprobs -> importance weights [B,T]
* reward shaping: DAPO overlong penalty, truncation mask, adaptive KL controller
* helpers: masked statistics, log-probs/entropy from logits, value loss.

Nothing here knows about devices, distributed training, engines or models; callers pick
an entry by name from a registry (names come from config) and pass plain tensors.

Shape letters: B = batch (sequences / env trajectories), T = positions (response tokens
or env steps), V = vocabulary. ``mask`` is 1 on valid positions and 0 on padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import torch
from torch import Tensor

__all__ = [
    "Registry",
    "ADVANTAGE_ESTIMATORS",
    "POLICY_LOSSES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "ROLLOUT_CORRECTIONS",
    "AdvantageInputs",
    "AdvantageParams",
    "PolicyLossParams",
    "AggTotals",
    "masked_sum",
    "masked_mean",
    "masked_whiten",
    "kl_penalty_rewards",
    "entropy_from_logits",
    "logprobs_from_logits",
    "value_loss",
    "explained_variance",
    "value_clip_fraction",
    "overlong_penalty",
    "add_sequence_reward",
    "KLController",
]

F = TypeVar("F", bound=Callable)


# --------------------------------------------------------------------------- registry


class Registry(Generic[F]):
    """Name -> function table, filled by the ``@REG.register("name")`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._fns: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding ``fn`` under ``name``; a duplicate name raises ``ValueError``
        (silently replacing a formula would change training without a trace)."""

        def deco(fn: F) -> F:
            if name in self._fns:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._fns[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        """The function registered as ``name``; ``KeyError`` listing known names otherwise."""
        try:
            return self._fns[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {self.names()}") from None

    def names(self) -> list[str]:
        return sorted(self._fns)

    def __contains__(self, name: object) -> bool:
        return name in self._fns

    def __len__(self) -> int:
        return len(self._fns)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")
POLICY_LOSSES: Registry = Registry("policy loss")
KL_ESTIMATORS: Registry = Registry("KL estimator")
LOSS_AGGREGATIONS: Registry = Registry("loss aggregation")
ROLLOUT_CORRECTIONS: Registry = Registry("rollout correction")


# --------------------------------------------------------------------------- helpers


def _valid(mask: Tensor) -> Tensor:
    return mask != 0


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x * mask``. x, mask: same shape (e.g. [B,T]); returns a scalar, or x
    reduced over ``dim``. Padding is zero-filled first so inf/NaN there cannot leak."""
    xm = x.masked_fill(~_valid(mask), 0) * mask
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid positions. x, mask: same shape; returns a scalar, or x
    reduced over ``dim``. Where there is no valid position the mean is 0 (not NaN)."""
    total = masked_sum(x, mask, dim)
    count = mask.to(total.dtype).sum() if dim is None else mask.to(total.dtype).sum(dim)
    # Divide by 1 where count is 0 (total is 0 there): no NaN in value or gradient.
    return total / torch.where(count > 0, count, torch.ones_like(count))


def masked_whiten(x: Tensor, mask: Tensor, eps: float = 1e-8, shift_mean: bool = True) -> Tensor:
    """Normalise the valid entries of ``x`` to mean 0, std 1 over ALL valid positions.

    x, mask: [B,T] (any shape); returns x's shape, 0 on padding. Uses the unbiased variance
    (as veRL). If every valid value is equal -- including a single valid value -- the
    result is exactly 0 instead of 0/0 noise. ``shift_mean=False`` adds the mean back.
    """
    valid = _valid(mask)
    mean = masked_mean(x, mask)
    centered = x - mean
    count = mask.to(x.dtype).sum()
    var = masked_sum(centered**2, mask) / torch.clamp(count - 1, min=1)
    hi = x.masked_fill(~valid, -math.inf).max() if x.numel() else x.new_tensor(0.0)
    lo = x.masked_fill(~valid, math.inf).min() if x.numel() else x.new_tensor(0.0)
    # Float mean of equal values may differ from them by an ulp; force the exact 0.
    centered = torch.where(hi == lo, torch.zeros_like(centered), centered)
    out = centered * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, torch.zeros_like(out))


def _float(t: Tensor) -> Tensor:
    """At least float32 (keeps float64 for exact tests; bf16 inputs get fp32 math)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


# --------------------------------------------------------------------------- advantages


@dataclass
class AdvantageInputs:
    """Inputs shared by all advantage estimators (each uses the fields it needs)."""

    # [B,T] float; outcome rewards on the last valid position, per-step rewards (gym) on every
    # step; may include a KL penalty
    token_rewards: Tensor
    mask: Tensor  # [B,T] 1 for valid positions (response tokens / env steps), 0 for padding
    group_ids: Tensor | None = None  # [B] long; samples sharing an id are answers to one prompt
    values: Tensor | None = None  # [B,T] critic values V(s_t) (GAE only)
    dones: Tensor | None = (
        None  # [B,T] 1 where an episode ended at step t (no value flows from t+1 back to t)
    )
    last_values: Tensor | None = (
        None  # [B] V(s_T) to bootstrap a segment cut mid-episode (GAE only; 0 if None)
    )
    # [B] each sample's sequence reward. Only read for rows with no valid position (an empty
    # response has no token to carry its reward): group estimators still count it in the
    # group's baseline, as peers do, so a reward that penalises empty output is not lost.
    seq_rewards: Tensor | None = None


@dataclass
class AdvantageParams:
    gamma: float = 1.0  # discount
    lam: float = 1.0  # GAE lambda
    eps: float = 1e-6  # added to the group std (grpo)


def _check_bt(x: AdvantageInputs) -> tuple[int, int]:
    if x.token_rewards.dim() != 2 or x.token_rewards.shape != x.mask.shape:
        raise ValueError(
            f"token_rewards and mask must both be [B,T]; got {tuple(x.token_rewards.shape)} "
            f"and {tuple(x.mask.shape)}"
        )
    return x.token_rewards.shape[0], x.token_rewards.shape[1]


def _dones(x: AdvantageInputs, ref: Tensor) -> Tensor:
    if x.dones is None:
        return torch.zeros_like(ref)
    if x.dones.shape != ref.shape:
        raise ValueError(f"dones must be [B,T]={tuple(ref.shape)}; got {tuple(x.dones.shape)}")
    return x.dones.to(ref.dtype)


def _outcome_scores(x: AdvantageInputs) -> Tensor:
    """[B] per-sample score: sum of valid token rewards; for a row with no valid position
    (empty response) its ``seq_rewards`` entry (0 if None)."""
    s = masked_sum(_float(x.token_rewards), x.mask, dim=-1)
    if x.seq_rewards is None:
        return s
    if x.seq_rewards.shape != s.shape:
        raise ValueError(
            f"seq_rewards must be [B]={tuple(s.shape)}; got {tuple(x.seq_rewards.shape)}"
        )
    empty = ~_valid(x.mask).any(dim=-1)
    return torch.where(empty, x.seq_rewards.to(s.dtype), s)


def _group_stats(scores: Tensor, group_ids: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-sample view of its group's (sum, count, unbiased std, all_equal); all [B].

    ``all_equal`` is true for groups whose scores are identical, which includes every
    single-sample group: such a group carries no baseline information.
    """
    if group_ids is None:
        raise ValueError("group-based advantage estimators need AdvantageInputs.group_ids [B]")
    if group_ids.shape != scores.shape:
        raise ValueError(
            f"group_ids must be [B]={tuple(scores.shape)}; got {tuple(group_ids.shape)}"
        )
    _, inv = torch.unique(group_ids, return_inverse=True)
    inv = inv.to(scores.device)
    n_groups = int(inv.max()) + 1 if inv.numel() else 0
    zeros = scores.new_zeros(n_groups)
    total = zeros.index_add(0, inv, scores)
    count = zeros.index_add(0, inv, torch.ones_like(scores))
    dev = scores - (total / count)[inv]
    var = zeros.index_add(0, inv, dev**2) / torch.clamp(count - 1, min=1)
    hi = zeros.scatter_reduce(0, inv, scores, reduce="amax", include_self=False)
    lo = zeros.scatter_reduce(0, inv, scores, reduce="amin", include_self=False)
    return total[inv], count[inv], var.sqrt()[inv], (hi == lo)[inv]


def _broadcast(per_sample: Tensor, mask: Tensor) -> Tensor:
    """[B] -> [B,T] on valid positions, 0 on padding."""
    out = per_sample.unsqueeze(-1).expand(mask.shape)
    return torch.where(_valid(mask), out, torch.zeros_like(out))


def _group_centered(
    x: AdvantageInputs, p: AdvantageParams, scale_std: bool
) -> tuple[Tensor, Tensor]:
    _check_bt(x)
    s = _outcome_scores(x)
    total, count, std, equal = _group_stats(s, x.group_ids)
    adv = s - total / count
    if scale_std:
        adv = adv / (std + p.eps)
    # Identical scores (or a lone sample) -> exactly 0, not float residue of mean/std.
    adv = torch.where(equal, torch.zeros_like(adv), adv)
    a = _broadcast(adv, x.mask)
    return a, a.clone()


@ADVANTAGE_ESTIMATORS.register("gae")
@torch.no_grad()
def gae(x: AdvantageInputs, p: AdvantageParams) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backward over valid steps.

    Inputs: token_rewards, mask, values [B,T]; optional dones [B,T], last_values [B].
    With n(t) the next VALID position after t:
        delta_t = r_t + gamma * c_t * V_{n(t)} - V_t
        A_t     = delta_t + gamma * lam * c_t * A_{n(t)}
    c_t = 0 if dones[t] or nothing valid follows t (trailing padding: the end of a response
    is terminal), else 1. An interior gap in the mask (environment/observation tokens
    between a multi-turn rollout's model turns) is skipped, not terminal: value and TD
    error carry across it, one discount per valid step. If position T-1 is valid the
    segment was cut mid-episode: V_T = last_values (0 if None).
    Returns (advantages [B,T], returns = advantages + values [B,T]), 0 on invalid positions.
    """
    _, T = _check_bt(x)
    if x.values is None:
        raise ValueError("gae needs AdvantageInputs.values [B,T]")
    r = _float(x.token_rewards)
    valid = _valid(x.mask)
    zero = torch.zeros_like(r)
    r = torch.where(valid, r, zero)
    v = torch.where(valid, x.values.to(r.dtype), zero)
    d = _dones(x, r)
    next_v = (
        torch.zeros_like(r[:, 0]) if x.last_values is None else x.last_values.to(r.dtype).clone()
    )
    alive = torch.ones_like(next_v)  # 1 while a later valid step (or the bootstrap) exists
    seen = torch.zeros_like(next_v, dtype=torch.bool)  # a valid step was met (right of t)
    running = torch.zeros_like(next_v)
    adv = torch.zeros_like(r)
    for t in range(T - 1, -1, -1):
        ok = valid[:, t]
        # Trailing padding ends the episode; an interior gap (seen already) changes nothing.
        alive = torch.where(~ok & ~seen, torch.zeros_like(alive), alive)
        c = alive * (1 - d[:, t])
        delta = r[:, t] + p.gamma * c * next_v - v[:, t]
        step = delta + p.gamma * p.lam * c * running
        running = torch.where(ok, step, running)
        next_v = torch.where(ok, v[:, t], next_v)
        alive = torch.where(ok, torch.ones_like(alive), alive)
        seen = seen | ok
        adv[:, t] = torch.where(ok, step, zero[:, t])
    return adv, torch.where(valid, adv + v, zero)


@ADVANTAGE_ESTIMATORS.register("grpo")
@torch.no_grad()
def grpo(x: AdvantageInputs, p: AdvantageParams) -> tuple[Tensor, Tensor]:
    """GRPO: A_i = (s_i - mean_group(s)) / (std_group(s) + eps), s_i = sum_t r_t * mask_t.

    Inputs: token_rewards, mask [B,T], group_ids [B]. std is unbiased (torch.std default).
    A group with identical scores, or a single-sample group (no baseline information,
    its std is undefined), gets exactly 0. Returns (adv, adv), both [B,T], A_i on the
    sample's valid tokens and 0 on padding.
    """
    return _group_centered(x, p, scale_std=True)


@ADVANTAGE_ESTIMATORS.register("grpo_no_std")
@ADVANTAGE_ESTIMATORS.register("dr_grpo")
@torch.no_grad()
def grpo_no_std(x: AdvantageInputs, p: AdvantageParams) -> tuple[Tensor, Tensor]:
    """GRPO without std scaling, also Dr.GRPO's advantage (Liu et al. 2025):
    A_i = s_i - mean_group(s). Shapes and zero cases as grpo (a single-sample group gets 0:
    no baseline information). Dr.GRPO's length-bias fix is the loss aggregation
    ``"seq-mean-token-sum-norm"``, not part of the advantage."""
    return _group_centered(x, p, scale_std=False)


@ADVANTAGE_ESTIMATORS.register("rloo")
@torch.no_grad()
def rloo(x: AdvantageInputs, p: AdvantageParams) -> tuple[Tensor, Tensor]:
    """RLOO: A_i = s_i - mean of the OTHER samples of i's group.

    Inputs: token_rewards, mask [B,T], group_ids [B]. A single-sample group has no other
    sample (no baseline information) and gets exactly 0, as does a group with identical
    scores. Returns (adv, adv), [B,T], 0 on padding.
    """
    _check_bt(x)
    s = _outcome_scores(x)
    total, count, _, equal = _group_stats(s, x.group_ids)
    adv = s - (total - s) / torch.clamp(count - 1, min=1)
    adv = torch.where(equal, torch.zeros_like(adv), adv)
    a = _broadcast(adv, x.mask)
    return a, a.clone()


def _discounted_returns(r: Tensor, mask: Tensor, dones: Tensor, gamma: float) -> Tensor:
    """[B,T] G_t = r_t + gamma * (1 - d_t) * G_{n(t)}, n(t) the next valid position (an
    interior gap is skipped, as in gae); no bootstrap beyond the segment."""
    valid = _valid(mask)
    ret = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in range(r.shape[1] - 1, -1, -1):
        g = r[:, t] + gamma * (1 - dones[:, t]) * running
        running = torch.where(valid[:, t], g, running)
        ret[:, t] = torch.where(valid[:, t], g, torch.zeros_like(g))
    return ret


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
@torch.no_grad()
def reinforce_pp(x: AdvantageInputs, p: AdvantageParams) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025): token-level discounted returns whitened over the batch.

    Inputs: token_rewards, mask [B,T]; optional dones [B,T] (returns stop at an episode
    end). G_t = r_t + gamma * G_{t+1} within the valid positions; advantages =
    masked_whiten(G) over ALL valid tokens of the batch. Returns (advantages [B,T],
    unwhitened G [B,T]), 0 on padding.
    """
    _check_bt(x)
    r = _float(x.token_rewards)
    valid = _valid(x.mask)
    r = torch.where(valid, r, torch.zeros_like(r))
    g = _discounted_returns(r, x.mask, _dones(x, r), p.gamma)
    g = torch.where(valid, g, torch.zeros_like(g))
    return masked_whiten(g, x.mask), g


@ADVANTAGE_ESTIMATORS.register("reinforce_pp_baseline")
@torch.no_grad()
def reinforce_pp_baseline(x: AdvantageInputs, p: AdvantageParams) -> tuple[Tensor, Tensor]:
    """REINFORCE++ with a group baseline: b_i = s_i - mean_group(s), broadcast over the
    sample's valid tokens, then whitened over ALL valid tokens of the batch.

    Inputs: token_rewards, mask [B,T], group_ids [B]; gamma is not used (outcome score).
    Returns (whitened [B,T], unwhitened b_i broadcast [B,T]), 0 on padding.
    """
    _check_bt(x)
    s = _outcome_scores(x)
    total, count, _, equal = _group_stats(s, x.group_ids)
    b = torch.where(equal, torch.zeros_like(s), s - total / count)
    b = _broadcast(b, x.mask)
    return masked_whiten(b, x.mask), b


# --------------------------------------------------------------------------- KL


def _log_ratio(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    return _float(logprobs) - _float(ref_logprobs)


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = log pi - log ref; unbiased, high variance, can be negative. [B,T] -> [B,T]."""
    return _log_ratio(logprobs, ref_logprobs)


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = 0.5 * (log pi - log ref)^2; biased, low variance, >= 0. [B,T] -> [B,T]."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = exp(ref - logp) - (ref - logp) - 1 (Schulman's low-variance, unbiased, >= 0).

    [B,T] -> [B,T]. As veRL: log-ratio clamped to [-20, 20] so exp cannot overflow, and the
    result clamped to [-10, 10] so one outlier token cannot dominate.
    """
    lr = torch.clamp(-_log_ratio(logprobs, ref_logprobs), min=-20.0, max=20.0)
    return torch.clamp(torch.exp(lr) - lr - 1, min=-10.0, max=10.0)


def kl_penalty_rewards(token_rewards: Tensor, kl: Tensor, coef: float, mask: Tensor) -> Tensor:
    """KL as a reward penalty: token_rewards - coef * kl on valid positions. All [B,T].

    ``kl`` is detached (the penalty shapes the reward, it is not differentiated); padding
    keeps ``token_rewards`` unchanged. KL as a loss term instead is
    ``LOSS_AGGREGATIONS.get(mode)(KL_ESTIMATORS.get(name)(logp, ref), mask) * coef``.
    """
    pen = coef * kl.detach().to(token_rewards.dtype)
    return torch.where(_valid(mask), token_rewards - pen, token_rewards)


# --------------------------------------------------------------------------- policy losses


@dataclass
class PolicyLossParams:
    clip_low: float = 0.2  # ratio lower bound 1 - clip_low
    clip_high: float = 0.2  # ratio upper bound 1 + clip_high (DAPO clip-higher uses e.g. 0.28)
    dual_clip: float | None = (
        None  # c > 1: for negative advantages bound the loss at -c*A (dual-clip PPO); None disables
    )
    cov_ratio: float = 2e-4  # clip_cov / kl_cov: share of valid tokens selected by covariance
    clip_cov_lb: float = 1.0  # clip_cov: only tokens with covariance in (lb, ub) are candidates
    clip_cov_ub: float = 5.0
    kl_cov_coef: float = 1.0  # kl_cov: weight of the |log-ratio| penalty on the selected tokens
    generator: torch.Generator | None = (
        None  # clip_cov's random token choice (None: torch's global RNG)
    )


def _clipped_pg(
    ratio: Tensor, log_ratio: Tensor, advantages: Tensor, mask: Tensor, p: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """Shared PPO clipping on a given ratio. ratio, log_ratio (token-level, for approx_kl),
    advantages, mask: [B,T]. Returns (per-token loss [B,T], 0 on padding; metrics)."""
    adv = _float(advantages)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high)
    loss = torch.maximum(pg1, pg2)
    with torch.no_grad():
        clipped = pg2 > pg1
        metrics = {
            "clip_frac": masked_mean(clipped.to(ratio.dtype), mask),
            # Which bound bit: low (A < 0, ratio pushed below 1 - clip_low) or high (A > 0).
            "clip_frac_low": masked_mean((clipped & (adv < 0)).to(ratio.dtype), mask),
            "clip_frac_high": masked_mean((clipped & (adv > 0)).to(ratio.dtype), mask),
            # k3 estimate of KL(old || new) from samples of old: r - 1 - log r, r = new/old.
            "approx_kl": masked_mean(torch.exp(log_ratio) - 1 - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    if p.dual_clip is not None:
        if p.dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1; got {p.dual_clip}")
        # With A < 0 the clipped objective is unbounded in the ratio; cap it at -c*A.
        pg3 = -adv * p.dual_clip
        neg = adv < 0
        with torch.no_grad():
            metrics["dual_clip_frac"] = masked_mean(((loss > pg3) & neg).to(ratio.dtype), mask)
        loss = torch.where(neg, torch.minimum(loss, pg3), loss)
    return torch.where(_valid(mask), loss, torch.zeros_like(loss)), metrics


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, p: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate with asymmetric clip (DAPO clip-higher) and optional dual clip.

    All inputs [B,T]; r_t = exp(logp_t - old_t) (log-ratio clamped to [-20, 20] against
    overflow), loss_t = max(-A r_t, -A clip(r_t, 1-clip_low, 1+clip_high)); with dual_clip
    c, for A < 0: loss_t = min(loss_t, -c A). Returns (per-token loss [B,T], 0 on padding,
    NOT aggregated; detached scalar metrics clip_frac, approx_kl, ratio_mean
    [, dual_clip_frac]).
    """
    log_ratio = torch.clamp(_float(logprobs) - _float(old_logprobs), min=-20.0, max=20.0)
    return _clipped_pg(torch.exp(log_ratio), log_ratio.detach(), advantages, mask, p)


@POLICY_LOSSES.register("gspo")
def gspo(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, p: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """GSPO (Zheng et al. 2025): sequence-level importance ratio, clipped like PPO.

    All inputs [B,T]. s_i = exp(mean over valid t of (logp - old)); token form
    s_{i,t} = sg[s_i] * exp(logp_t - sg[logp_t]) has value s_i and d s_{i,t}/d logp_t = s_i,
    so each token gets its own gradient. loss_{i,t} = max(-A s_{i,t}, -A clip(s_{i,t},
    1-clip_low, 1+clip_high)) (dual_clip applies as in ppo_clip). Aggregate with
    "seq-mean-token-mean" for the paper's objective. Returns (per-token loss [B,T], 0 on
    padding; detached metrics as ppo_clip, approx_kl from the token-level ratio).
    """
    lp = _float(logprobs)
    token_lr = lp - _float(old_logprobs)
    seq_lr = masked_mean(token_lr.detach(), mask, dim=-1)  # [B]; 0 (ratio 1) if empty
    log_s = torch.clamp(seq_lr, min=-20.0, max=20.0).unsqueeze(-1) + lp - lp.detach()
    tok = torch.clamp(token_lr.detach(), min=-20.0, max=20.0)
    return _clipped_pg(torch.exp(log_s), tok, advantages, mask, p)


def _token_log_ratio(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    """log pi - log old, clamped to [-20, 20] so exp cannot overflow. [B,T]."""
    return torch.clamp(_float(logprobs) - _float(old_logprobs), min=-20.0, max=20.0)


def _ratio_metrics(log_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    lr = log_ratio.detach()
    return {
        "approx_kl": masked_mean(torch.exp(lr) - 1 - lr, mask),
        "ratio_mean": masked_mean(torch.exp(lr), mask),
    }


@POLICY_LOSSES.register("cispo")
def cispo(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, p: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """CISPO (MiniMax-M1, MiniMax 2025, arXiv:2506.13585): clip the importance weight, not
    the update.

    All inputs [B,T]. loss_t = -sg[clip(r_t, 1-clip_low, 1+clip_high)] * A_t * logp_t, so
    every token keeps a gradient (PPO's clip zeroes those outside the trust region), each
    scaled by its truncated weight. The paper sets no lower bound (clip_low=1 -> floor 0).
    Returns (per-token loss [B,T], 0 on padding; detached metrics clip_frac (weight
    truncated), clip_frac_low, clip_frac_high, approx_kl, ratio_mean).
    """
    lp = _float(logprobs)
    log_ratio = _token_log_ratio(lp, old_logprobs).detach()
    ratio = torch.exp(log_ratio)
    w = torch.clamp(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high)
    loss = -w * _float(advantages) * lp
    with torch.no_grad():
        low, high = ratio < 1.0 - p.clip_low, ratio > 1.0 + p.clip_high
        metrics = {
            "clip_frac": masked_mean((low | high).to(ratio.dtype), mask),
            "clip_frac_low": masked_mean(low.to(ratio.dtype), mask),
            "clip_frac_high": masked_mean(high.to(ratio.dtype), mask),
            **_ratio_metrics(log_ratio, mask),
        }
    return torch.where(_valid(mask), loss, torch.zeros_like(loss)), metrics


@POLICY_LOSSES.register("gmpo")
def gmpo(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, p: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """GMPO (Zhao et al. 2025, "Geometric-Mean Policy Optimization", arXiv:2507.20673):
    maximise the geometric mean of the token ratios instead of their arithmetic mean.

    All inputs [B,T]. Per token the log-ratio is clipped in the direction of the advantage
    (sgn(A) * l_t = min(sgn(A) * l_t, sgn(A) * clamp(l_t, log(1-clip_low), log(1+clip_high))),
    the paper's token-level clip); then for sequence i with |o_i| valid tokens
        s_i = exp(mean_t l_t),  A_i = mean_t A_t,  L_i = -A_i * s_i.
    The paper's range (e^-0.4, e^0.4) is clip_low = 1 - e^-0.4, clip_high = e^0.4 - 1.
    Every valid token of row i carries L_i, so "seq-mean-token-mean" aggregation gives the
    paper's mean over sequences. Returns (per-token loss [B,T], 0 on padding; detached
    metrics clip_frac (share of tokens whose log-ratio was clipped), approx_kl, ratio_mean).
    """
    log_ratio = _token_log_ratio(logprobs, old_logprobs)
    adv = _float(advantages)
    sgn = torch.sign(adv)
    lo = math.log(1.0 - p.clip_low) if p.clip_low < 1.0 else -20.0
    clamped = torch.clamp(log_ratio, min=lo, max=math.log1p(p.clip_high))
    lr = sgn * torch.minimum(sgn * log_ratio, sgn * clamped)
    seq_lr = masked_mean(lr, mask, dim=-1)  # [B]
    seq_adv = masked_mean(adv, mask, dim=-1)  # [B]; outcome advantages are constant per row
    seq_loss = -seq_adv * torch.exp(seq_lr)
    loss = _broadcast(seq_loss, mask)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((lr != log_ratio).to(lr.dtype), mask),
            **_ratio_metrics(log_ratio, mask),
        }
    return loss, metrics


def _centered_cov(adv: Tensor, logprobs: Tensor, mask: Tensor) -> Tensor:
    """[B,T] per-token (A - mean A)(logp - mean logp) over the valid tokens: each token's
    share of the covariance that drives entropy change (Cui et al. 2025)."""
    a, lp = _float(adv).detach(), _float(logprobs).detach()
    return (a - masked_mean(a, mask)) * (lp - masked_mean(lp, mask))


@POLICY_LOSSES.register("clip_cov")
def clip_cov(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, p: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clip-Cov (Cui et al. 2025, "The Entropy Mechanism of Reinforcement Learning for
    Reasoning Language Models", arXiv:2505.22617): PPO-clip, plus the gradient of a few
    high-covariance tokens is detached to keep entropy from collapsing.

    All inputs [B,T]. Candidates: valid tokens not already clipped by PPO whose centered
    covariance (A - mean A)(logp - mean logp) lies in (clip_cov_lb, clip_cov_ub); of them
    max(1, int(cov_ratio * n_valid)) are chosen at random (``p.generator``) and their loss
    is multiplied by 0 (as veRL). Otherwise identical to ppo_clip. Returns (per-token loss
    [B,T]; metrics of ppo_clip plus cov_clip_frac, the share of tokens detached).
    """
    loss, metrics = ppo_clip(logprobs, old_logprobs, advantages, mask, p)
    with torch.no_grad():
        log_ratio = _token_log_ratio(logprobs, old_logprobs)
        ratio = torch.exp(log_ratio)
        adv = _float(advantages)
        clipped = -adv * torch.clamp(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high) > -adv * ratio
        cov = _centered_cov(adv, logprobs, mask)
        cand = _valid(mask) & ~clipped & (cov > p.clip_cov_lb) & (cov < p.clip_cov_ub)
        idx = torch.nonzero(cand.reshape(-1)).squeeze(-1)
        n = max(int(p.cov_ratio * float(_valid(mask).sum())), 1)
        keep = torch.ones(mask.numel(), dtype=loss.dtype, device=loss.device)
        if idx.numel():
            pick = idx[torch.randperm(idx.numel(), generator=p.generator)[:n].to(idx.device)]
            keep[pick] = 0
        keep = keep.reshape(mask.shape)
        metrics["cov_clip_frac"] = masked_mean(1 - keep, mask)
    return loss * keep, metrics


@POLICY_LOSSES.register("kl_cov")
def kl_cov(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor, p: PolicyLossParams
) -> tuple[Tensor, dict[str, Tensor]]:
    """KL-Cov (Cui et al. 2025, arXiv:2505.22617): no ratio clipping; the top
    max(1, int(cov_ratio * n_valid)) valid tokens by centered covariance
    (A - mean A)(logp - mean logp) get a KL penalty kl_cov_coef * |logp - old| added.

    All inputs [B,T]. loss_t = -A_t r_t (+ kl_cov_coef |log r_t| on the selected tokens).
    Deterministic (top-k). Returns (per-token loss [B,T], 0 on padding; detached metrics
    kl_cov_frac, approx_kl, ratio_mean).
    """
    log_ratio = _token_log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio)
    loss = -_float(advantages) * ratio
    with torch.no_grad():
        valid = _valid(mask).reshape(-1)
        cov = _centered_cov(advantages, logprobs, mask).reshape(-1)
        n_valid = int(valid.sum())
        sel = torch.zeros_like(cov)
        if n_valid:
            n = max(int(p.cov_ratio * n_valid), 1)
            top = torch.topk(cov.masked_fill(~valid, -math.inf), n).indices
            sel[top] = 1
        sel = sel.reshape(mask.shape).to(loss.dtype)
        metrics = {"kl_cov_frac": masked_mean(sel, mask), **_ratio_metrics(log_ratio, mask)}
    loss = loss + sel * p.kl_cov_coef * log_ratio.abs()
    return torch.where(_valid(mask), loss, torch.zeros_like(loss)), metrics


# --------------------------------------------------------------------------- aggregation


@dataclass(frozen=True)
class AggTotals:
    """The denominators of a loss aggregation: what the mean is taken over.

    An aggregation returns ``sum over its rows / totals``, so when ``totals`` are those of the
    whole minibatch -- every micro-batch on every data-parallel rank -- the parts' values add
    up to the minibatch's value exactly, however the rows were cut. Callers build local totals
    with ``AggTotals.of(mask)`` and add those of the other parts (``+``; the learner
    all-reduces them over its ranks).

    tokens: valid positions (mask != 0). seqs: sequences with at least one valid position.
    length: the constant normaliser of seq-mean-token-sum-norm (the padded response length,
    the same for every part).
    """

    tokens: float
    seqs: float
    length: int

    @classmethod
    def of(cls, mask: Tensor) -> AggTotals:
        """The totals of one part. mask [B,T]."""
        return cls(float(_valid(mask).sum()), float(_n_seqs(mask)), int(mask.shape[-1]))

    def __add__(self, other: AggTotals) -> AggTotals:
        if self.length != other.length:
            raise ValueError(f"parts padded differently: length {self.length} != {other.length}")
        return AggTotals(self.tokens + other.tokens, self.seqs + other.seqs, self.length)


def _safe_div(num: Tensor, den: float) -> Tensor:
    """num / den, with den <= 0 (nothing valid) treated as 1 so the result is 0, not NaN."""
    return num / (den if den > 0 else 1.0)


def _n_seqs(mask: Tensor) -> Tensor:
    """Sequences with at least one valid token (empty rows are not counted)."""
    return _valid(mask).any(dim=-1).sum()


@LOSS_AGGREGATIONS.register("token-mean")
def token_mean(per_token: Tensor, mask: Tensor, totals: AggTotals | None = None) -> Tensor:
    """sum(l * m) / totals.tokens. per_token, mask: [B,T] -> scalar. totals default to
    ``AggTotals.of(mask)``: the mean over this part alone."""
    t = AggTotals.of(mask) if totals is None else totals
    return _safe_div(masked_sum(per_token, mask), t.tokens)


@LOSS_AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(per_token: Tensor, mask: Tensor, totals: AggTotals | None = None) -> Tensor:
    """sum_i mean_t(l_i,t) / totals.seqs. [B,T] -> scalar. A sequence with no valid token
    contributes 0 and is not counted."""
    t = AggTotals.of(mask) if totals is None else totals
    return _safe_div(masked_mean(per_token, mask, dim=-1).sum(), t.seqs)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(per_token: Tensor, mask: Tensor, totals: AggTotals | None = None) -> Tensor:
    """sum_i sum_t(l_i,t) / totals.seqs: each sequence's summed loss, averaged over
    sequences (longer responses weigh more; veRL's "seq-mean-token-sum"). [B,T] -> scalar."""
    t = AggTotals.of(mask) if totals is None else totals
    return _safe_div(masked_sum(per_token, mask), t.seqs)


@LOSS_AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(
    per_token: Tensor, mask: Tensor, totals: AggTotals | None = None
) -> Tensor:
    """Dr.GRPO: sum(l * m) / (totals.seqs * totals.length). [B,T] -> scalar.

    A constant normaliser removes GRPO's per-sequence length bias; ``length`` is the
    minibatch's padded length, not a trimmed micro-batch's.
    """
    t = AggTotals.of(mask) if totals is None else totals
    return _safe_div(masked_sum(per_token, mask), t.seqs * t.length)


# --------------------------------------------------------------------------- plain functions


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits): [B,T,V] -> [B,T], float32 or wider.

    H = logsumexp(z) - sum_v softmax(z)_v z_v, which never forms log(0); -inf logits
    (banned tokens) are replaced by the most negative finite float so 0 * -inf cannot
    appear.
    """
    z = _float(logits)
    z = torch.nan_to_num(z, nan=torch.nan, neginf=torch.finfo(z.dtype).min)
    probs = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (probs * z).sum(-1)


def logprobs_from_logits(logits: Tensor, tokens: Tensor) -> Tensor:
    """log softmax(logits)[tokens]: logits [B,T,V], tokens [B,T] long -> [B,T] float32+.

    Computed as gather(z) - logsumexp(z), equal to log_softmax + gather without writing a
    second [B,T,V] tensor.
    """
    z = _float(logits)
    picked = torch.gather(z, -1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None
) -> Tensor:
    """Critic loss per token [B,T] (0 on padding, not aggregated); all inputs [B,T].

    clip None: 0.5 (v - R)^2. clip c: 0.5 max((v - R)^2, (old + clamp(v - old, -c, c) - R)^2),
    the PPO value clip that keeps the critic near the values used for the advantages.
    """
    v = _float(values)
    ret = _float(returns)
    loss = (v - ret) ** 2
    if clip is not None:
        old = _float(old_values)
        v_clip = old + torch.clamp(v - old, -clip, clip)
        loss = torch.maximum(loss, (v_clip - ret) ** 2)
    loss = 0.5 * loss
    return torch.where(_valid(mask), loss, torch.zeros_like(loss))


@torch.no_grad()
def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over valid positions; [B,T] -> scalar (detached).

    1 = perfect critic, 0 = no better than a constant, < 0 = worse. If Var[R] is 0 the
    ratio is undefined: returns 1 if Var[R - V] is 0 too, else 0 (sklearn's convention).
    """
    v = _float(values)
    ret = _float(returns)

    def var(t: Tensor) -> Tensor:
        return masked_mean((t - masked_mean(t, mask)) ** 2, mask)

    var_r = var(ret)
    var_d = var(ret - v)
    if var_r > 0:
        return 1 - var_d / var_r
    return ret.new_tensor(1.0 if var_d == 0 else 0.0)


def value_clip_fraction(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None
) -> Tensor:
    """Share of valid positions where value_loss took the clipped branch; [B,T] -> scalar
    (detached). 0 when clip is None."""
    if clip is None:
        return _float(values).new_tensor(0.0)
    with torch.no_grad():
        v, old, ret = _float(values), _float(old_values), _float(returns)
        v_clip = old + torch.clamp(v - old, -clip, clip)
        return masked_mean(((v_clip - ret) ** 2 > (v - ret) ** 2).to(v.dtype), mask)


# --------------------------------------------------------------------------- off-policy correction


def _is_log_ratio(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str
) -> Tensor:
    """[B,T] log(pi_old / pi_rollout) per token ("token") or the row's summed log-ratio
    broadcast over its valid tokens ("sequence"); clamped to [-20, 20]; 0 on padding."""
    lr = torch.where(
        _valid(mask),
        _float(old_logprobs) - _float(rollout_logprobs),
        torch.zeros_like(_float(old_logprobs)),
    )
    if level == "sequence":
        lr = _broadcast(masked_sum(lr, mask, dim=-1), mask)
    elif level != "token":
        raise ValueError(f"rollout IS level must be 'token' or 'sequence'; got {level!r}")
    return torch.clamp(lr, min=-20.0, max=20.0).detach()


def _is_metrics(w: Tensor, changed: Tensor, mask: Tensor) -> dict[str, float]:
    return {
        "algo/rollout_is_weight_mean": float(masked_mean(w, mask)),
        "algo/rollout_is_clipped_frac": float(masked_mean(changed.to(w.dtype), mask)),
    }


def _check_cap(cap: float) -> None:
    if not cap > 1.0:
        raise ValueError(f"rollout IS cap must be > 1; got {cap}")


@ROLLOUT_CORRECTIONS.register("none")
@torch.no_grad()
def rollout_is_none(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str, cap: float
) -> tuple[Tensor, dict[str, float]]:
    """No correction: weights 1 on valid tokens, 0 on padding. All [B,T]. The metrics still
    report the mean untruncated weight pi_old/pi_rollout (how off-policy the batch is)."""
    ratio = torch.exp(_is_log_ratio(old_logprobs, rollout_logprobs, mask, level))
    w = _valid(mask).to(ratio.dtype)
    return w, {
        "algo/rollout_is_weight_mean": float(masked_mean(ratio, mask)),
        "algo/rollout_is_clipped_frac": 0.0,
    }


@ROLLOUT_CORRECTIONS.register("tis")
@torch.no_grad()
def rollout_is_tis(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str, cap: float
) -> tuple[Tensor, dict[str, float]]:
    """Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly
    brings you off-policy RL training"; Espeholt et al. 2018's truncated rho).

    old_logprobs (the learner's, pi_old), rollout_logprobs (the engine's, pi_rollout), mask:
    [B,T]. w = min(pi_old / pi_rollout, cap), per token or per sequence (the ratio of the
    sequence probabilities, broadcast over its tokens). Returns (weights [B,T], 0 on padding,
    detached; {algo/rollout_is_weight_mean, algo/rollout_is_clipped_frac: share of valid
    tokens truncated}).
    """
    _check_cap(cap)
    ratio = torch.exp(_is_log_ratio(old_logprobs, rollout_logprobs, mask, level))
    w = torch.where(_valid(mask), torch.clamp(ratio, max=cap), torch.zeros_like(ratio))
    return w, _is_metrics(w, ratio > cap, mask)


@ROLLOUT_CORRECTIONS.register("mask")
@torch.no_grad()
def rollout_is_mask(
    old_logprobs: Tensor, rollout_logprobs: Tensor, mask: Tensor, level: str, cap: float
) -> tuple[Tensor, dict[str, float]]:
    """Masked importance sampling (Liu et al. 2025, "When speed kills stability"): a token
    (or a whole sequence) whose ratio pi_old / pi_rollout is above cap or below 1/cap gets
    weight 0; the others keep their ratio. Shapes and metrics as ``tis``
    (rollout_is_clipped_frac: share of valid tokens masked)."""
    _check_cap(cap)
    ratio = torch.exp(_is_log_ratio(old_logprobs, rollout_logprobs, mask, level))
    out = (ratio > cap) | (ratio < 1.0 / cap)
    w = torch.where(_valid(mask) & ~out, ratio, torch.zeros_like(ratio))
    return w, _is_metrics(w, out, mask)


# --------------------------------------------------------------------------- reward shaping


@torch.no_grad()
def overlong_penalty(lengths: Tensor, max_len: int, buffer: int, penalty: float) -> Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, arXiv:2503.14476, eq. 13).

    lengths [B] response lengths in tokens -> [B] reward to ADD (<= 0):
        0                                  if L <= max_len - buffer
        -penalty * (L - (max_len - buffer)) / buffer   if max_len - buffer < L <= max_len
        -penalty                           if L > max_len
    buffer 0 disables it (all zeros).
    """
    L = lengths.to(torch.float32) if not lengths.is_floating_point() else _float(lengths)
    if buffer <= 0:
        return torch.zeros_like(L)
    start = max_len - buffer
    ramp = -penalty * (L - start) / buffer
    return torch.where(
        L <= start,
        torch.zeros_like(L),
        torch.where(L <= max_len, ramp, torch.full_like(L, -penalty)),
    )


def add_sequence_reward(token_rewards: Tensor, mask: Tensor, extra: Tensor) -> Tensor:
    """token_rewards [B,T] with extra [B] added on each row's LAST valid position (where
    an outcome reward sits); rows with no valid position are unchanged. Returns [B,T]."""
    valid = _valid(mask)
    pos = torch.arange(mask.shape[-1], device=mask.device).expand(mask.shape)
    last = torch.where(valid, pos, torch.full_like(pos, -1)).max(dim=-1).values  # [B]
    hit = (pos == last.unsqueeze(-1)) & valid
    return token_rewards + hit.to(token_rewards.dtype) * extra.to(token_rewards.dtype).unsqueeze(-1)


class KLController:
    """The KL coefficient: fixed, or adaptive towards a target KL (Ziegler et al. 2019,
    "Fine-Tuning Language Models from Human Preferences", sec. 2.2).

    Adaptive: e = clip(kl / target - 1, -0.2, 0.2); coef *= 1 + e * n_steps / horizon.
    ``state_dict``/``load_state_dict`` carry the coefficient across a resume.
    """

    def __init__(self, coef: float, target: float | None = None, horizon: int = 10000):
        if target is not None and (target <= 0 or horizon <= 0):
            raise ValueError(
                f"adaptive KL needs target > 0 and horizon > 0; got {target}, {horizon}"
            )
        self.value, self.target, self.horizon = float(coef), target, horizon

    def update(self, kl: float, n_steps: int) -> float:
        """Feed the KL measured on a batch of n_steps samples; returns the new coefficient."""
        if self.target is not None:
            err = min(max(kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + err * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = float(state["value"])
