"""Trainer._broadcast when an engine dies mid-broadcast: the other engines' receives fail too
(their weight-sync group lost a member); the error raised must be the death, which
Trainer.sync_weights recovers from, whatever order the engines' errors come in. Fakes: refs
are plain values or exceptions, ray.get raises the first exception of a list as Ray does."""

from types import SimpleNamespace

import pytest
import ray

from rlhf.faults import NotSynced
from rlhf.trainer import Trainer


def fake_get(refs, **_):
    for r in refs if isinstance(refs, list) else [refs]:
        if isinstance(r, Exception):
            raise r
    return refs


@pytest.mark.parametrize("dead_first", [True, False])
def test_the_dead_engine_is_reported_not_a_survivors_collective_error(monkeypatch, dead_first):
    monkeypatch.setattr(ray, "get", fake_get)
    monkeypatch.setattr(ray, "wait", lambda refs, **_: (refs, []))
    death, survivor = NotSynced(1), RuntimeError("gloo: connection closed by peer")
    receiving = [death, survivor] if dead_first else [survivor, death]
    trainer = SimpleNamespace(
        learners=SimpleNamespace(broadcast_weights=lambda: ["sent"]),
        rollout=SimpleNamespace(receive_weights=lambda version: receiving),
    )
    with pytest.raises(NotSynced):
        Trainer._broadcast(trainer, 3)


def test_an_error_without_a_death_is_raised_as_it_is(monkeypatch):
    monkeypatch.setattr(ray, "get", fake_get)
    monkeypatch.setattr(ray, "wait", lambda refs, **_: (refs, []))
    trainer = SimpleNamespace(
        learners=SimpleNamespace(broadcast_weights=lambda: ["sent"]),
        rollout=SimpleNamespace(receive_weights=lambda version: ["ok", ValueError("shape")]),
    )
    with pytest.raises(ValueError, match="shape"):
        Trainer._broadcast(trainer, 3)
    trainer.rollout = SimpleNamespace(receive_weights=lambda version: ["ok", "ok"])
    Trainer._broadcast(trainer, 3)  # no error: nothing raised
