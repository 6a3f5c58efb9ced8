"""The totals math that makes the learner rank-invariant (rlhf/learner/reduce.py, algos.AggTotals),
with the ranks' all-reduce simulated: each "rank" sees its own rows, the collective adds the
other ranks' tensors. The real gloo version is tests/integration/test_learner_ranks.py."""

import pytest
import torch

from rlhf import algos
from rlhf.algos import LOSS_AGGREGATIONS, AggTotals
from rlhf.learner import reduce

AGGS = LOSS_AGGREGATIONS.names()


def ragged(seed=0, rows=8, width=7):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, width + 1, (rows,), generator=g)
    lengths[0] = 0  # an empty row
    mask = (torch.arange(width)[None, :] < lengths[:, None]).float()
    loss = torch.randn(rows, width, generator=g, dtype=torch.float64)
    return loss, mask


def as_ranks(monkeypatch, ranks: list):
    """Run `fn(rank_data)` once per rank, the collective summing every rank's tensor: each
    rank's call first records its tensor, then every rank's result is recomputed with the sum.
    Returns each rank's result."""

    def run(fn):
        recorded = []
        monkeypatch.setattr(reduce, "all_reduce_sum", lambda t: recorded.append(t.clone()) or t)
        for data in ranks:
            fn(data)
        results, total = [], sum(recorded)
        for data in ranks:
            monkeypatch.setattr(reduce, "all_reduce_sum", lambda t, s=total: t.copy_(s))
            results.append(fn(data))
        return results

    return run


def test_the_issue_example_token_mean_over_two_ranks():
    # rank 0: 2 tokens of loss 1; rank 1: 6 tokens of loss 0. The batch's token-mean is 0.25;
    # the mean of the ranks' own token-means would be 0.5.
    loss = [torch.ones(1, 2), torch.zeros(1, 6)]
    mask = [torch.ones(1, 2), torch.ones(1, 6)]
    mean = LOSS_AGGREGATIONS.get("token-mean")
    per_rank_means = [float(mean(lv, m)) for lv, m in zip(loss, mask)]
    assert sum(per_rank_means) / 2 == 0.5
    totals = AggTotals(8.0, 2.0, 6)
    assert sum(float(mean(lv, m, totals)) for lv, m in zip(loss, mask)) == 0.25


def test_totals_of_a_mask_and_their_sum():
    loss, mask = ragged()
    t = AggTotals.of(mask)
    assert t == AggTotals(float(mask.sum()), float((mask.sum(1) > 0).sum()), mask.shape[1])
    parts = [AggTotals.of(mask[:3]), AggTotals.of(mask[3:])]
    assert parts[0] + parts[1] == t
    with pytest.raises(ValueError, match="padded differently"):
        _ = t + AggTotals(1.0, 1.0, t.length + 1)


@pytest.mark.parametrize("agg", AGGS)
@pytest.mark.parametrize("k", [2, 4])
def test_group_totals_make_rank_shares_add_up_to_the_batch_value_and_gradient(monkeypatch, agg, k):
    loss, mask = ragged(seed=k, rows=8)
    fn = LOSS_AGGREGATIONS.get(agg)
    loss.requires_grad_(True)
    whole = fn(loss, mask)
    (g_whole,) = torch.autograd.grad(whole, loss)
    rows = torch.arange(8).chunk(k)

    def rank(idx):
        (t,) = reduce.group_totals([AggTotals.of(mask[idx])])
        return t

    totals = as_ranks(monkeypatch, list(rows))(rank)
    assert all(t == AggTotals.of(mask) for t in totals)
    shares = [fn(loss[idx], mask[idx], t) for idx, t in zip(rows, totals)]
    assert float(sum(shares)) == pytest.approx(float(whole), rel=1e-12)
    # What the worker backpropagates: K x the share per rank; DeepSpeed averages over ranks.
    grads = [torch.autograd.grad(k * s, loss)[0] for s in shares]
    torch.testing.assert_close(sum(grads) / k, g_whole)


def test_group_metrics_equal_those_of_one_rank_holding_every_micro_batch(monkeypatch):
    # Two minibatches; each rank holds two micro-batches of each. "algo/loss" is a share
    # (additive), "algo/clipfrac" a per-micro-batch token mean.
    g = torch.Generator().manual_seed(1)

    def micro():
        n = float(torch.randint(1, 20, (1,), generator=g))
        return {
            "algo/loss": float(torch.randn(1, generator=g)),
            "algo/clipfrac": float(torch.rand(1, generator=g)),
        }, n

    ranks = [[[micro(), micro()], [micro(), micro()]] for _ in range(3)]
    additive = {"algo/loss"}
    got = as_ranks(monkeypatch, ranks)(lambda mbs: reduce.group_metrics(mbs, additive))
    monkeypatch.setattr(reduce, "all_reduce_sum", lambda t: t)
    one = reduce.group_metrics(
        [[p for r in ranks for p in r[j]] for j in range(2)], additive
    )  # a single rank with all micro-batches
    for g_rank in got:
        assert g_rank.keys() == one.keys()
        for key in one:
            assert g_rank[key] == pytest.approx(one[key], rel=1e-12)
    # and by hand: the shares summed, the means token-weighted, then the mean of minibatches
    parts = [[p for r in ranks for p in r[j]] for j in range(2)]
    loss = sum(sum(m["algo/loss"] for m, _ in ps) for ps in parts) / 2
    frac = (
        sum(sum(m["algo/clipfrac"] * n for m, n in ps) / sum(n for _, n in ps) for ps in parts) / 2
    )
    assert one["algo/loss"] == pytest.approx(loss) and one["algo/clipfrac"] == pytest.approx(frac)


def test_without_a_process_group_the_collectives_are_the_identity():
    t = torch.tensor([1.0, 2.0])
    assert reduce.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    assert reduce.group_totals([]) == [] and reduce.group_metrics([], set()) == {}
    mask = torch.ones(2, 3)
    assert reduce.group_totals([AggTotals.of(mask)]) == [AggTotals(6.0, 2.0, 3)]


def test_masked_sum_of_padding_garbage_is_ignored_by_the_shares():
    loss, mask = ragged(seed=3)
    loss = loss.masked_fill(mask == 0, float("nan"))
    t = AggTotals.of(mask)
    for agg in AGGS:
        parts = [
            LOSS_AGGREGATIONS.get(agg)(loss[i : i + 2], mask[i : i + 2], t) for i in (0, 2, 4, 6)
        ]
        assert torch.isfinite(torch.stack(parts)).all()
        assert float(sum(parts)) == pytest.approx(float(LOSS_AGGREGATIONS.get(agg)(loss, mask)))
    assert algos.masked_sum(loss, mask).isfinite()
