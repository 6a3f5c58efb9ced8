"""A rollout worker failing in the middle of a weight broadcast frees the others: the real
WeightSyncGroup, three gloo processes (the root and two receivers), one receiver failing after
a few buckets. A process that exits is noticed by gloo at once (its sockets close); one that
hangs (frozen here with SIGSTOP, as a wedged engine or an unreachable node) is not, and only
the group's timeout (learner.sync_timeout_s, set by the root and read by every receiver from
the group's store) frees the others instead of gloo's default 600 s."""

import os
import signal
import socket
import time

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.integration

TIMEOUT_S = 3.0
META = [(f"w{i}", (256,), "float32") for i in range(40)]  # 40 buckets of one 1 KiB tensor


def member(rank: int, port: int, failure: str, out) -> None:
    from rlhf.rollout.weight_sync import ParamMeta, WeightSyncGroup

    meta = [ParamMeta(*m) for m in META]
    # Only the root passes the timeout: the receivers must take it from the store.
    g = WeightSyncGroup(
        "127.0.0.1",
        port,
        rank,
        3,
        torch.device("cpu"),
        meta,
        1024,
        timeout_s=TIMEOUT_S if rank == 0 else None,
    )
    out.put((rank, "ready", g.timeout_s))
    start = time.monotonic()
    try:
        if rank == 0:
            for b in g.buckets:
                g.send_bucket(b, [torch.full((256,), 1.0) for _ in b])
                time.sleep(0.05)  # the killed receiver dies while buckets are still to come
        else:
            for k, (_, t) in enumerate(g.receive()):
                assert float(t[0]) == 1.0
                if rank == 2 and k == 5:  # fails mid-broadcast
                    if failure == "exits":
                        os._exit(1)
                    os.kill(os.getpid(), signal.SIGSTOP)
        out.put((rank, "finished", time.monotonic() - start))
    except Exception as e:
        out.put((rank, f"raised {type(e).__name__}", time.monotonic() - start))


@pytest.mark.parametrize("failure", ["exits", "hangs"])
def test_a_receiver_failing_mid_broadcast_frees_the_others_within_the_timeout(failure):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=member, args=(r, port, failure, out)) for r in range(3)]
    for p in procs:
        p.start()
    ready = [out.get(timeout=120) for _ in range(3)]
    assert sorted(r for r, _, _ in ready) == [0, 1, 2]
    assert all(what == "ready" and t == TIMEOUT_S for _, what, t in ready), ready
    # Rank 2 reports nothing more (it is dead); ranks 0 and 1 must both come back, and well
    # before gloo's default timeout would have let them (600 s).
    ends = dict((r, (what, secs)) for r, what, secs in (out.get(timeout=60) for _ in range(2)))
    procs[2].kill()  # the frozen one
    for p in procs:
        p.join(timeout=30)
    assert set(ends) == {0, 1}, ends
    for rank, (what, secs) in ends.items():
        assert what.startswith("raised"), (rank, what)  # the broadcast is incomplete
        assert secs < TIMEOUT_S + 15, (rank, secs)
    if failure == "hangs":  # only the timeout could have freed them
        assert all(secs >= TIMEOUT_S for _, secs in ends.values()), ends
