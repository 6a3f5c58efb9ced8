"""Fault: reward functions that call os._exit, hang forever, raise SystemExit (plus one that
raises and one that returns NaN), in one short CLI run on the real stack. The run finishes; the
crash/timeout/error/NaN counters equal the faults the function logged; no step takes longer than
its timeouts allow plus a margin; every reward worker process is gone afterwards."""

import collections
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FAULTS = ["exit", "hang", "sysexit", "raise", "nan"]
TIMEOUT_S = 4.0
WORKERS = 2
STEPS = 3
MARGIN_S = 6.0  # a normal step here is about 1 s (the first about 8 s: warm-ups)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_reward_worker_faults(tmp_path):
    rows = [
        {"prompt": f"{a}+{b}=", "answer": str(a + b), "fault": ""}
        for a, b in [
            (1, 2),
            (2, 3),
            (3, 3),
            (4, 1),
            (5, 0),
            (6, 2),
            (0, 4),
            (2, 2),
            (3, 1),
            (1, 5),
            (4, 4),
            (6, 0),
            (2, 6),
            (5, 1),
            (0, 0),
            (3, 4),
        ]
    ]
    for row, fault in zip(rows, FAULTS):
        row["fault"] = fault
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    log, run_dir = tmp_path / "calls.log", tmp_path / "run"
    env = {
        **os.environ,
        "RLHF_TEST_REWARD_LOG": str(log),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.train",
            "+experiment=grpo",
            f"trainer.total_steps={STEPS}",
            f"data.path={data}",
            "reward.fn=reward_faults:faulty",
            f"reward.timeout_s={TIMEOUT_S}",
            f"reward.workers={WORKERS}",
            "reward.fallback=0.0",
            "rollout.prompts_per_step=8",
            "rollout.samples_per_prompt=2",
            "learner.micro_batch_size=8",
            "eval=off",  # held-out evaluation would score more samples with the same function
            "logger.wandb.mode=disabled",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))

    calls = [line.split() for line in log.read_text().splitlines()]
    injected = collections.Counter(kind for _, kind in calls)
    assert all(injected[f] >= 1 for f in FAULTS), injected  # every fault really happened
    total = lambda key: sum(m[key] for m in metrics)  # noqa: E731
    assert total("reward/crashes") == injected["exit"]
    assert total("reward/timeouts") == injected["hang"]
    # SystemExit is an error at once, not a timeout
    assert total("reward/errors") == injected["raise"] + injected["sysexit"]
    assert total("reward/nans") == injected["nan"]
    assert len(calls) == STEPS * 16  # every sample scored exactly once

    # A hang costs one timeout per worker slot, nothing else does.
    for m in metrics:
        budget = math.ceil(m["reward/timeouts"] / WORKERS) * TIMEOUT_S + MARGIN_S
        if m["step"] == 1:
            budget += 10.0  # first-call warm-ups of vLLM and DeepSpeed
        assert m["timing/step_s"] <= budget, (m["step"], m["timing/step_s"], budget)

    # No reward worker is left behind: the hung one was killed, the exited one is dead, and the
    # pool's replacements ended with their actor.
    pids = {int(pid) for pid, _ in calls}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not [p for p in pids if _alive(p)]
    print(
        f"reward fault run: {wall:.1f}s wall, injected {dict(injected)}, "
        f"step_s {[round(m['timing/step_s'], 2) for m in metrics]}"
    )
