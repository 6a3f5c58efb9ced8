"""W&B offline logging, metrics.jsonl and the report for a real tiny GRPO run, and a Hydra sweep
(the runs are the sweep's points)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlhf.metrics import _wandb_records, read_offline_run

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
ENV = {
    **os.environ,
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "WANDB_SILENT": "true",
    "WANDB_API_KEY": "",
}


def _run(args, timeout=600):
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.train", *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _run_record(run_dir: Path):
    path = sorted(run_dir.glob("wandb/*run-*/run-*.wandb"))[-1]
    return next(r.run for r in _wandb_records(path) if r.WhichOneof("record_type") == "run")


STEPS = 4


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A two-point Hydra sweep with offline W&B: each point is a full run (both tests read
    its folders), so the module pays the CLI's start-up once instead of for a third run."""
    sweep_dir = tmp_path_factory.mktemp("observability") / "sweep"
    proc = _run(
        [
            "-m",
            "+experiment=grpo",
            f"trainer.total_steps={STEPS}",
            "seed=1,2",
            "logger.wandb.mode=offline",
            "logger.samples_every=2",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        timeout=900,
    )
    return sweep_dir, proc


def test_wandb_offline_run_logs_config_and_every_step(sweep):
    run_dir = sweep[0] / "0"  # seed=1
    config, history = read_offline_run(run_dir)
    assert config["algo"]["advantage"] == "grpo" and config["trainer"]["total_steps"] == STEPS
    metric_rows = [h for h in history if "reward/mean" in h]
    assert [h["trainer/step"] for h in metric_rows] == list(range(1, STEPS + 1))
    for h in metric_rows:
        for key in (
            "reward/mean",
            "rollout/response_len_mean",
            "algo/entropy",
            "learner/grad_norm",
            "timing/rollout_s",
            "timing/update_s",
            "perf/tokens_per_s",
            "perf/samples_per_s",
        ):
            assert key in h, key
    assert any("samples" in h for h in history), "no sample table logged"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    assert (run_dir / "report.png").stat().st_size > 10_000
    record = _run_record(run_dir)
    assert "grpo" in list(record.tags)


def test_two_point_sweep_groups_runs_and_summarises(sweep):
    sweep_dir, proc = sweep
    jobs = sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / "metrics.jsonl").exists())
    assert [p.name for p in jobs] == ["0", "1"]
    groups = {_run_record(j).run_group for j in jobs}
    assert len(groups) == 1 and groups != {""}, groups
    summary = (sweep_dir / "sweep_summary.md").read_text()
    assert "seed=1" in summary and "seed=2" in summary
    assert "sweep_summary" in proc.stdout + proc.stderr or "seed=1" in proc.stdout + proc.stderr
