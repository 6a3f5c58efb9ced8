"""What the person watching a run sees: console lines, number formats, and the step clock
behind the progress line's seconds per step and ETA."""

from __future__ import annotations

import collections
import logging
import statistics
import time
from typing import Any

log = logging.getLogger("rlhf")


def console(msg: str) -> None:
    """One line for the person watching. Through logging when something (Hydra) configured it to
    show INFO, so the line also lands in the run's log file; plain print otherwise, so it is
    never lost."""
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(msg)
    else:
        print(msg, flush=True)


class StartupLog:
    """Start-up progress: `say("starting Ray")` prints `[startup  3.2s] starting Ray`, seconds
    since `t0` (default: now), so a slow start shows what it is waiting for (scripts/bench.py
    reads the breakdown back from these lines)."""

    def __init__(self, t0: float | None = None):
        self.t0 = time.perf_counter() if t0 is None else t0

    def say(self, msg: str) -> None:
        console(f"[startup {time.perf_counter() - self.t0:5.1f}s] {msg}")


class StepClock:
    """Steady-state seconds per step and the ETA from them.

    A step's duration is the wall time between two consecutive `tick`s (so logging, checkpoint
    saves and, with an overlapping pipeline, the real cadence are all counted); the first tick
    of a process has no predecessor and uses the step time the trainer reported. The first step
    of a process pays every first-call warm-up (vLLM, DeepSpeed, allocator), so it is left out
    as soon as a later step is known, and the estimate is the median of the last `window`
    steps, so that one slow step (a checkpoint) does not swing the ETA.
    """

    def __init__(self, total_steps: int, window: int = 20):
        self.total_steps = total_steps
        self._first: float | None = None
        self._recent: collections.deque[float] = collections.deque(maxlen=window)
        self._last: float | None = None

    def tick(self, step_s: float | None = None, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        if self._last is None:
            self._first = step_s
        else:
            self._recent.append(now - self._last)
        self._last = now

    @property
    def warming_up(self) -> bool:
        """Only the first step is known: its time says little about the rest."""
        return not self._recent

    def seconds_per_step(self) -> float | None:
        if self._recent:
            return statistics.median(self._recent)
        return self._first

    def eta(self, step: int) -> float | None:
        """Seconds left after `step`; None while only the warm-up step is known."""
        s = self.seconds_per_step()
        if s is None or self.warming_up:
            return None
        return s * max(0, self.total_steps - step)

    def describe(self, step: int) -> list[str]:
        """The progress line's timing parts."""
        s = self.seconds_per_step()
        if s is None:
            return []
        if self.warming_up:
            return [f"{s:.2f} s first step (warm-up; ETA from step 2)"]
        return [f"{s:.2f} s/step", f"ETA {fmt_duration(self.eta(step))}"]


def fmt(v: Any) -> str:
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return str(v)


def fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
