"""Placement slots (no Ray: the reservation is stubbed): colocated learner ranks that take turns
with their engine compute with the whole bundle's CPUs; otherwise Ray's per-actor limit stays."""

import pytest

from rlhf import placement
from rlhf.compose import compose


def slots_for(monkeypatch, *overrides):
    monkeypatch.setattr(placement, "_reserve", lambda bundles, *a: ("pg", bundles))
    cfg, _ = compose("+experiment=grpo", *overrides)
    return placement.create_placement(cfg)


@pytest.mark.parametrize(
    "overrides,threads",
    [
        (["placement=colocated", "learner.num_ranks=1"], [2]),  # 1 learner CPU + 1 engine CPU
        (["placement=colocated", "learner.num_ranks=2"], [2, 1]),  # rank 1 has no engine
        (["placement=colocated", "learner.num_ranks=1", "rollout.max_staleness=1"], [0]),  # overlap
        ([], [0, 0]),  # disaggregated: each role has its own CPUs
    ],
)
def test_learner_threads(monkeypatch, overrides, threads):
    p = slots_for(monkeypatch, *overrides)
    assert [s.threads for s in p.learner] == threads
    assert all(s.threads == 0 for s in p.rollout)
