"""Reading an offline W&B run from its transaction log (tests, and checking what a run would
upload), and waiting until wandb-core has written a run's last record."""

from __future__ import annotations

import json
import logging
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("rlhf")

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, parts = _HEADER, []
    while True:
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer too short for a header: padding
            pos += _BLOCK - pos % _BLOCK
        if pos + _HEADER > len(data):
            return
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return  # torn tail of a run that is still being written or was killed
        parts = [chunk] if kind in (_FULL, _FIRST) else parts + [chunk]
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def wait_for_exit_record(path: Path, timeout_s: float = 10.0) -> bool:
    """Wait until the transaction log holds the run's exit record. wandb-core (0.31, offline)
    may still be flushing its last block when run.finish() returns; waiting here means a finished
    RunLogger leaves a complete, syncable run folder for whatever reads it next in-process."""
    deadline = time.monotonic() + timeout_s
    while True:
        if path.exists() and any(
            r.WhichOneof("record_type") == "exit" for r in _wandb_records(path)
        ):
            return True
        if time.monotonic() > deadline:
            log.warning("W&B: %s has no exit record after %.0f s", path, timeout_s)
            return False
        time.sleep(0.05)


def _item_path(item) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set_path(d: dict, path: list[str], value: Any) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def read_offline_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(config, history) of the latest W&B run under run_dir/wandb/. `config` is what W&B holds
    (without its '_wandb' entry); `history` is one dict per logged step, with W&B's own '_step',
    '_runtime', '_timestamp' and media (tables) as their JSON descriptors."""
    runs = sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"), key=lambda p: p.parent.name)
    if not runs:
        raise FileNotFoundError(f"no W&B run under {Path(run_dir) / 'wandb'}")
    config: dict = {}
    history: list[dict] = []
    for record in _wandb_records(runs[-1]):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            cfg = record.run.config if kind == "run" else record.config
            for item in cfg.update:
                _set_path(config, _item_path(item), json.loads(item.value_json))
            for item in cfg.remove:
                config.pop(_item_path(item)[0], None)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set_path(row, _item_path(item), json.loads(item.value_json))
            history.append(row)
    config.pop("_wandb", None)
    return config, history
