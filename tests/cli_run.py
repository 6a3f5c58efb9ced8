"""`python -m rlhf.train` as a user runs it, for the tests that launch it: offline, output
captured."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(run_dir: Path, *overrides: str, pythonpath: str = "") -> subprocess.CompletedProcess:
    """One run in `run_dir`; `pythonpath` goes first on the run's PYTHONPATH (user modules)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "rlhf.train", *overrides, f"hydra.run.dir={run_dir}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
