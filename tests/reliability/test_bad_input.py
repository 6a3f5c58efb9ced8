"""Bad input fails fast, before Ray, naming the file and line or the key.

Each case runs the CLI exactly as a user would, with one fault injected, and asserts: exit code
2, the config-error paragraph naming what is wrong, the "no Ray process was started" line, and
a wall time far below Ray + vLLM start-up (the fault used to surface 53 s in, or as a
traceback). FAST_S is generous for a loaded 2-core CI machine: the checks themselves take a
few seconds (Python, Hydra, torch and datasets imports).
"""

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
FAST_S = 45
ROWS = [{"prompt": f"{a}+{b}=", "answer": a + b} for a in range(7) for b in range(7)]


def _jsonl(path: Path, rows, extra: dict[int, bytes] | None = None) -> Path:
    lines = [json.dumps(r).encode() for r in rows]
    for line_no, raw in sorted((extra or {}).items()):
        lines.insert(line_no - 1, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run(tmp_path: Path, *overrides: str, env: dict | None = None):
    args = [
        sys.executable,
        "-m",
        "rlhf.train",
        "+experiment=grpo",
        f"hydra.run.dir={tmp_path / 'run'}",
        "reward.fn=rlhf.reward.rules:exact_match",
        *overrides,
    ]
    start = time.perf_counter()
    proc = subprocess.run(
        args,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", **(env or {})},
    )
    return proc, time.perf_counter() - start


def _assert_config_error(proc, elapsed, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "no Ray process was started" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for n in needles:
        assert n in proc.stderr, f"{n!r} not in: {proc.stderr[-1500:]}"
    assert elapsed < FAST_S, f"took {elapsed:.1f}s"


CASES = {
    # fault injected -> (rows inserted at line numbers, extra overrides, what the message names)
    "invalid_utf8": (
        {5: b'{"prompt": "1+\xff=", "answer": 2}'},
        [],
        ["bad.jsonl:line 5", "not valid UTF-8"],
    ),
    "wrong_type": ({9: b'{"prompt": ["1+1="], "answer": 2}'}, [], ["bad.jsonl:line 9", "'prompt'"]),
    "missing_field": ({12: b'{"prompt": "1+1="}'}, [], ["bad.jsonl:line 12", "no field 'answer'"]),
    "too_many_skipped": (
        {2: b"{not json", 3: b'{"answer": 1}'},
        ["data.on_bad_row=skip", "data.max_bad_frac=0.02"],
        ["data.max_bad_frac", "2 of 51 rows are bad"],
    ),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every case's CLI run, two at a time: each is a few seconds of imports and checks on one
    core, and this machine has two. Keyed by case; each run's wall time is its own."""
    root = tmp_path_factory.mktemp("bad_input")
    jobs = {}
    for case, (extra, overrides, _) in CASES.items():
        (root / case).mkdir()
        path = _jsonl(root / case / "bad.jsonl", ROWS, extra)
        jobs[case] = (root / case, [f"data.path={path}", *overrides], None)
    jobs["max_model_len"] = (
        root / "max_model_len",
        ["rollout.max_new_tokens=100000", "rollout.vllm.max_model_len=128"],
        None,
    )
    jobs["empty_wandb_mode"] = (root / "empty_wandb_mode", [], {"WANDB_MODE": ""})
    with ThreadPoolExecutor(max_workers=2) as pool:
        started = {
            case: pool.submit(_run, folder, *overrides, env=env)
            for case, (folder, overrides, env) in jobs.items()
        }
        return {case: future.result() for case, future in started.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_rows_name_file_and_line(runs, case):
    _assert_config_error(*runs[case], *CASES[case][2])


def test_generation_longer_than_the_engine_context(runs):
    _assert_config_error(*runs["max_model_len"], "rollout.max_new_tokens", "max_model_len=128")


def test_empty_wandb_mode_in_the_environment(runs):
    _assert_config_error(*runs["empty_wandb_mode"], "WANDB_MODE", "logger.wandb.mode=disabled")
