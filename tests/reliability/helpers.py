"""Running the CLI as a user would and injecting faults into it: shared by the reliability tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Metrics that measure time or the machine, not what was learned: never compared between runs.
VOLATILE = ("timing/", "perf/", "fault/", "learner/lr_")


def launch(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """`python -m rlhf.train` with its output in run_dir.parent/<name>.log."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}.log", "a")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhf.train",
            *overrides,
            "logger.wandb.mode=disabled",
            "trainer.report=false",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def log_of(run_dir: Path) -> str:
    path = run_dir.parent / f"{run_dir.name}.log"
    return path.read_text() if path.exists() else ""


def rows(run_dir: Path, name: str = "metrics.jsonl") -> list[dict]:
    """Complete rows only: the run may be writing the last one right now."""
    path = run_dir / name
    if not path.exists():
        return []
    return [
        json.loads(line)
        for line in path.read_text().splitlines(keepends=True)
        if line.endswith("\n") and line.strip()
    ]


def wait_until(proc: subprocess.Popen, condition, timeout_s: float = 300.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def steps_logged(run_dir: Path) -> int:
    return len(rows(run_dir))


def run_processes(proc: subprocess.Popen) -> list:
    """The driver's process tree: the local Ray cluster it started (GCS, raylet, dashboard
    agents) and every actor process under it. psutil.Process objects."""
    import psutil

    driver = psutil.Process(proc.pid)
    return [driver, *driver.children(recursive=True)]


def actor_pids(proc: subprocess.Popen, actor_class: str) -> list[int]:
    """PIDs of this run's actors of a class (Ray titles actor processes 'ray::Class...')."""
    out = []
    for p in run_processes(proc):
        try:
            if " ".join(p.cmdline()).startswith(f"ray::{actor_class}"):
                out.append(p.pid)
        except Exception:  # exited meanwhile
            pass
    return out


def alive(processes: list) -> list[str]:
    out = []
    for p in processes:
        try:
            if p.is_running() and p.status() != "zombie":
                out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except Exception:
            pass
    return out


def hard_kill(proc: subprocess.Popen) -> None:
    """SIGKILL of the driver, as a preempted node or an OOM kill would; then the orphaned Ray
    processes of its cluster are cleaned up, so the next run starts on a quiet machine."""
    tree = run_processes(proc)
    proc.kill()
    proc.wait(timeout=30)
    for p in tree[1:]:
        try:
            p.kill()
        except Exception:
            pass


def learned(run_rows: list[dict]) -> list[dict]:
    """The comparable metrics of each step (not times: keys under VOLATILE or ending in _s)."""
    return [
        {k: v for k, v in r.items() if not k.startswith(VOLATILE) and not k.endswith("_s")}
        for r in run_rows
    ]
