"""Weight broadcast from learner rank 0 to every rollout worker.

One process group spans learner rank 0 (rank 0, the root) and each rollout worker (ranks 1..N):
gloo on CPUs, NCCL on GPUs; the code path is the same, only the backend differs. The group is
made without touching anyone's default process group (the learners' DeepSpeed group, vLLM's
own), from a TCPStore that rank 0 hosts.

Both sides know the parameter list (`WeightMeta`: names, shapes, dtypes, sent once through Ray at
set-up), so a sync is just a sequence of bucket broadcasts: the sender flattens consecutive
parameters into buckets of at most `bucket_bytes`, the receivers unflatten the same plan.

Receivers: `VllmWeightReceiver` is a vLLM worker extension (it runs inside vLLM's worker and
loads the tensors through rlhf/rollout/engine_load.py: in place on the CPU backend, which
re-packs only the linear layers' GEMM handles, vLLM's layerwise reload elsewhere); gym runners
use `WeightSyncGroup.receive` and load_state_dict.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParamMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # e.g. "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


WeightMeta = list[ParamMeta]
_TIMEOUT_KEY = "rlhf/sync_timeout_s"
DEFAULT_TIMEOUT_S = 600.0  # gloo's own default


def describe(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> WeightMeta:
    return [
        ParamMeta(n, tuple(t.shape), str(t.dtype).removeprefix("torch.")) for n, t in named_tensors
    ]


def plan_buckets(meta: WeightMeta, bucket_bytes: int) -> list[list[int]]:
    """Group consecutive parameters of one dtype into buckets of at most `bucket_bytes`
    (a single larger parameter gets a bucket of its own). Sender and receivers call this with
    the same arguments, so they agree on the plan without exchanging it."""
    buckets: list[list[int]] = []
    current: list[int] = []
    size, dtype = 0, None
    for i, p in enumerate(meta):
        nbytes = p.numel * torch.empty((), dtype=getattr(torch, p.dtype)).element_size()
        if current and (p.dtype != dtype or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size += nbytes
        dtype = p.dtype
    if current:
        buckets.append(current)
    return buckets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


class WeightSyncGroup:
    """A process group of learner rank 0 (rank 0) and the rollout workers (ranks 1..N)."""

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        device: torch.device,
        meta: WeightMeta,
        bucket_bytes: int,
        timeout_s: float | None = None,
    ):
        """timeout_s: set by rank 0 (learner.sync_timeout_s; default gloo's 600 s) and
        published through the store; the receivers take rank 0's value whatever they pass.
        Every collective of the group fails after it, so when one member dies mid-broadcast
        the others are freed in that time and the trainer can rebuild the group."""
        self.rank, self.device, self.meta = rank, device, meta
        self._in_flight = None  # rank 0: the Work of the bucket being sent
        self._slot = 0  # rank 0: which of the two staging buffers the next bucket uses
        self._buffers: dict = {}  # CPU: flat buffers kept between syncs (see _buffer)
        self.buckets = plan_buckets(meta, bucket_bytes)
        # Rank 0 hosts the store and must not wait for the others here: they join while the
        # process group is being created.
        store = dist.TCPStore(
            host,
            port,
            world_size,
            is_master=rank == 0,
            timeout=datetime.timedelta(seconds=max(timeout_s or 0.0, DEFAULT_TIMEOUT_S)),
            wait_for_workers=False,
        )
        if rank == 0:
            timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
            store.set(_TIMEOUT_KEY, repr(float(timeout_s)))
        else:
            timeout_s = float(store.get(_TIMEOUT_KEY).decode())
        self.timeout_s = timeout_s
        timeout = datetime.timedelta(seconds=timeout_s)
        if device.type == "cuda":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.group = dist.ProcessGroupNCCL(store, rank, world_size, opts)
        else:
            self.group = dist.ProcessGroupGloo(store, rank, world_size, timeout)

    def _broadcast(self, flat: torch.Tensor):
        """Start a broadcast from rank 0; returns its Work (call .wait())."""
        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        return self.group.broadcast([flat], opts)

    def send_bucket(self, bucket: list[int], tensors: list[torch.Tensor]) -> int:
        """Rank 0: broadcast one bucket of the plan (`tensors` in bucket order). The caller
        walks `self.buckets` in order; one bucket at a time lets ZeRO-3 gather per bucket.
        Returns bytes sent.

        Pipelined: the bucket is flattened (a copy, so the caller may release gathered
        parameters at once) while the previous bucket is still on the wire; at most one
        bucket is in flight, and the last bucket of the plan is waited for before returning."""
        for i, t in zip(bucket, tensors):
            if tuple(t.shape) != self.meta[i].shape:
                raise ValueError(
                    f"{self.meta[i].name}: shape {tuple(t.shape)} != {self.meta[i].shape}"
                )
        numel = sum(self.meta[i].numel for i in bucket)
        # Alternate between two staging buffers: one on the wire, one being filled.
        self._slot ^= 1
        flat = self._buffer(("send", self._slot, tensors[0].dtype), numel, tensors[0].dtype)
        self.flush()  # the previous bucket used the other buffer; this one is free again
        torch.cat([t.detach().reshape(-1).to(self.device) for t in tensors], out=flat)
        self._in_flight = self._broadcast(flat)
        if bucket == self.buckets[-1]:
            self.flush()
        return flat.numel() * flat.element_size()

    def flush(self) -> None:
        """Rank 0: wait until the bucket in flight (if any) has been sent."""
        pending, self._in_flight = self._in_flight, None
        if pending is not None:
            pending.wait()

    def send(self, tensors: list[torch.Tensor]) -> int:
        """Rank 0: broadcast all tensors, in the order of `meta`."""
        return sum(self.send_bucket(b, [tensors[i] for i in b]) for b in self.buckets)

    def _buffer(self, key, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A flat buffer of `numel` elements. On CPU it is kept and reused by the next sync:
        a fresh buffer of that size costs a page fault per 4 KiB when first written (about a
        third of a raw broadcast's time, measured); the CUDA caching allocator reuses memory
        by itself."""
        if self.device.type != "cpu":
            return torch.empty(numel, dtype=dtype, device=self.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            buf = self._buffers[key] = torch.empty(numel, dtype=dtype, device=self.device)
        return buf[:numel]

    def _post_receive(self, k: int):
        params = [self.meta[i] for i in self.buckets[k]]
        dtype = getattr(torch, params[0].dtype)
        flat = self._buffer(("recv", k), sum(p.numel for p in params), dtype)
        return self._broadcast(flat), flat, params

    def receive(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Ranks 1..N: yield (name, tensor) in the order of `meta`, bucket by bucket.
        Consume the iterator fully: every bucket is a collective call. The tensors are views
        of buffers that the next sync overwrites (on CPU): copy what must outlive the load.

        The next bucket's broadcast is posted before the current one is handed out, so the
        caller's loading of bucket k overlaps the transfer of bucket k + 1 (gloo and NCCL run
        posted collectives in the background)."""
        pending = self._post_receive(0) if self.buckets else None
        for k in range(len(self.buckets)):
            work, flat, params = pending
            work.wait()
            if k + 1 < len(self.buckets):
                pending = self._post_receive(k + 1)
            offset = 0
            for p in params:
                yield p.name, flat[offset : offset + p.numel].view(p.shape)
                offset += p.numel


class VllmWeightReceiver:
    """vLLM worker extension (`LLM(worker_extension_cls=...)`): methods run inside each vLLM
    worker and are reached through `llm.collective_rpc(name, args=...)`."""

    def init_weight_sync(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        meta: list[tuple[str, tuple[int, ...], str]],
        bucket_bytes: int,
    ) -> None:
        # Tensor-free arguments only: collective_rpc serialises them.
        rank = rank_offset + _tp_rank()
        meta = [ParamMeta(n, tuple(s), d) for n, s, d in meta]
        self._rlhf_sync = WeightSyncGroup(
            host, port, rank, world_size, self.device, meta, bucket_bytes
        )

    def receive_weights(self) -> None:
        from rlhf.rollout.engine_load import load_into_engine

        # In place on CPU (the loads overlap the transfer of the next bucket), vLLM's
        # layerwise reload elsewhere (rlhf/rollout/engine_load.py).
        self._rlhf_load_path = load_into_engine(
            self.model_runner.get_model(),
            self.model_runner.model_config,
            self._rlhf_sync.receive(),
        )

    def weight_load_path(self) -> str | None:
        """How the last sync was loaded: "inplace" or "layerwise" (None before the first)."""
        return getattr(self, "_rlhf_load_path", None)


def _tp_rank() -> int:
    try:
        from vllm.distributed import get_tensor_model_parallel_rank

        return get_tensor_model_parallel_rank()
    except Exception:  # not initialised: a single-worker engine
        return 0
