"""What makes the learner group's losses, gradients and metrics independent of its rank count.

DeepSpeed averages gradients over the data-parallel ranks. A loss whose denominator is one
rank's count then trains on the mean of the ranks' means, not the batch's mean: a rank holding
2 tokens of loss 1 and a rank holding 6 tokens of loss 0 give 0.5, where the batch's token-mean
is 0.25. So the totals that define a mean (algos.AggTotals) are summed over the ranks before
anyone divides, each rank backpropagates its share of the batch's loss times the rank count
(DeepSpeed's average of those is the batch's gradient; LearnerWorker.update), and metrics
travel as sums, reduced over the ranks once per update, so every rank returns the group's
values.

Collectives run on torch.distributed's default group (the learners' DeepSpeed group); in a
single process, or a group of one, they are the identity. Every rank must call them in the same
order with tensors of the same shape.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf.algos import AggTotals


def _group_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """`t` summed over the ranks, in place (and returned). Collective."""
    import torch.distributed as dist

    if _group_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def group_totals(local: list[AggTotals], device: torch.device | str = "cpu") -> list[AggTotals]:
    """Each part's totals summed over the ranks: part i of every rank together is one
    minibatch. All ranks pad their rows to the batch's width (Batch.split keeps it), so
    `length` needs no reduction. One collective for all parts."""
    if not local:
        return []
    t = torch.tensor([[p.tokens, p.seqs] for p in local], dtype=torch.float64, device=device)
    t = all_reduce_sum(t).cpu()
    return [AggTotals(float(a), float(b), p.length) for (a, b), p in zip(t.tolist(), local)]


def group_metrics(
    minibatches: list[list[tuple[dict[str, float], float]]],
    additive: frozenset[str] | set[str] | tuple[str, ...],
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """The group's metrics of one update from this rank's micro-batches.

    minibatches: per applied minibatch, the (metrics, valid tokens) of each of its
    micro-batches on this rank (every rank passes as many minibatches, the same keys).
    Keys in `additive` are shares of the minibatch's value (aggregated with its group
    totals): summed over micro-batches and ranks. The others are per-micro-batch token means:
    weighted by tokens over micro-batches and ranks. Then the plain mean over minibatches.
    One collective."""
    if not minibatches:
        return {}
    keys = sorted(minibatches[0][0][0])
    rows = []
    for parts in minibatches:
        row = [sum(m[k] if k in additive else m[k] * n for m, n in parts) for k in keys]
        rows.append(row + [sum(n for _, n in parts)])
    t = all_reduce_sum(torch.tensor(rows, dtype=torch.float64, device=device)).cpu()
    tokens = t[:, -1].clamp(min=1.0)
    out = {}
    for j, k in enumerate(keys):
        per_minibatch = t[:, j] if k in additive else t[:, j] / tokens
        out[k] = float(per_minibatch.mean())
    return out
