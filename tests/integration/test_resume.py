"""Reliability: Ctrl-C saves the finished step and stops; a rerun in the same folder resumes
from it; a half-written checkpoint is never picked up; nothing is lost or logged twice."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _cmd(run_dir, steps):
    return [
        sys.executable,
        "-m",
        "rlhf.train",
        "+experiment=grpo",
        f"trainer.total_steps={steps}",
        "trainer.save_every=2",
        "logger.wandb.mode=disabled",
        f"hydra.run.dir={run_dir}",
    ]


def _steps(run_dir):
    path = run_dir / "metrics.jsonl"
    return [json.loads(line)["step"] for line in path.open()] if path.exists() else []


def test_interrupt_then_resume(tmp_path, tiny_model_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        _cmd(run_dir, 40),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while len(_steps(run_dir)) < 3:
        assert proc.poll() is None and time.monotonic() < deadline, "run died or stalled"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-2000:]
    done = _steps(run_dir)
    last = done[-1]
    assert done == list(range(1, last + 1)) and last < 40
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert f"step-{last:06d}" in ckpts, (ckpts, last)

    # A crash in the middle of a save leaves only a temporary folder: resume must ignore it.
    (run_dir / "checkpoints" / f".tmp-step-{last + 1:06d}").mkdir()
    total = last + 2
    proc = subprocess.run(
        _cmd(run_dir, total), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (
        f"resumed from {run_dir / 'checkpoints' / f'step-{last:06d}'}" in proc.stdout + proc.stderr
    )
    assert _steps(run_dir) == list(range(1, total + 1))
    state = json.loads(
        (run_dir / "checkpoints" / f"step-{total:06d}" / "trainer_state.json").read_text()
    )
    assert state["step"] == total and state["version"] == total
    assert len([p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("step-")]) <= 2
