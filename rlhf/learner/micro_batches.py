"""How a learner rank cuts its rows into micro-batches under a token budget
(`learner.max_tokens_per_micro_batch`), and how the ranks agree on how many there are.

Pure functions on row lengths (the real, unpadded token count of each row) returning row-index
groups; the worker indexes and trims the Batch with them (Batch.trimmed). No DeepSpeed here:
`agree_on_count` only needs torch.distributed's default group when one exists.
"""

from __future__ import annotations

import torch
from torch import Tensor


def pack_by_tokens(lengths: Tensor, budget: int) -> list[Tensor]:
    """Greedy packing: rows sorted longest first, each group filled while
    rows x (its longest row) <= budget. lengths [B] -> groups of row indices (long [n_i]),
    every row exactly once, each group's rows longest first.

    Padding a group costs rows x longest row tokens of compute, so similar lengths go
    together: a long tail of lengths packs into a few big groups of short rows and small
    groups of long ones. A row longer than the budget is an error (config validation bounds
    the longest possible row)."""
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    groups: list[list[int]] = []
    for i in order:
        n = int(lengths[i])
        if n > budget:
            raise ValueError(
                f"a row of {n} tokens exceeds learner.max_tokens_per_micro_batch={budget}"
            )
        # Rows come longest first: the group's longest row is its first.
        if groups and (len(groups[-1]) + 1) * int(lengths[groups[-1][0]]) <= budget:
            groups[-1].append(i)
        else:
            groups.append([i])
    return [torch.tensor(g, dtype=torch.long) for g in groups]


def split_to_count(groups: list[Tensor], lengths: Tensor, count: int) -> list[Tensor]:
    """Halve the costliest group (rows x longest row, among those of > 1 row) until there are
    `count` groups; a split group's halves stay under the budget. Ranks with equal row counts
    can always reach any count up to that row count (one row per group)."""
    if count > len(lengths):
        raise ValueError(f"cannot cut {len(lengths)} rows into {count} micro-batches")
    groups = list(groups)
    while len(groups) < count:
        i = max(
            (j for j, g in enumerate(groups) if len(g) > 1),
            key=lambda j: len(groups[j]) * int(lengths[groups[j]].max()),
        )
        g, half = groups[i], (len(groups[i]) + 1) // 2
        groups[i : i + 1] = [g[:half], g[half:]]
    return groups


def agree_on_count(count: int, device: torch.device | str = "cpu") -> int:
    """The largest `count` over the ranks of torch.distributed's default group (`count` itself
    without one). Collective: every rank calls it with its own count. ZeRO's collectives run
    per forward/backward (gradient reduce-scatter under ZeRO-2, parameter gathers even in a
    no_grad forward under ZeRO-3), so all ranks must run as many micro-batches."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return count
    t = torch.tensor([count], dtype=torch.long, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())
