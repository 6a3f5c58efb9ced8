"""Following a running `rlhf.train` from a benchmark: the rows it appends to metrics.jsonl, and
stopping it the way a user would (Ctrl-C)."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path


class MetricsTail:
    """The rows appended to a metrics.jsonl, each complete line once, with the wall time it was
    first seen; a half-written last line waits for the next call."""

    def __init__(self, path: Path):
        self.path, self.offset = Path(path), 0

    def new_rows(self) -> list[tuple[dict, float]]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        now = time.time()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [(json.loads(line), now) for line in complete.splitlines()]


def interrupt(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGINT a still-running child (it finishes the step and shuts Ray down); kill it if it
    has not exited within `timeout_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
