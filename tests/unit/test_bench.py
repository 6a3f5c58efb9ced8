"""scripts/bench.py and scripts/bench_gpu.py: the table arithmetic, the hooks that must say
"not run" rather than print a number, and the GPU benchmark's clear failure without CUDA.
The benchmarks themselves are not tests (they run with `make bench`)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))  # as `python scripts/NAME.py` has it


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


bench = load("bench")
bench_gpu = load("bench_gpu")


def test_row_ratio_is_median_over_median_with_spread():
    r = bench.Row("weight_sync", "tiny", "s", ours=[3.0, 1.0, 2.0], baseline=[1.0, 0.5, 100.0])
    assert r.ratio == pytest.approx(2.0 / 1.0)
    assert bench.spread(r.ours) == "2 (1-3)"
    d = r.as_dict()
    assert d["ratio"] == pytest.approx(2.0) and d["ours_median"] == 2.0
    assert bench.Row("x", "y", "s").ratio is None


def test_table_prints_ratios_and_rows_that_did_not_run(capsys):
    skipped = bench.Row(
        "time_to_reward",
        "grpo default, reward 0.8",
        "s",
        note="not run: TRL is not installed (pip install '.[bench]')",
    )
    assert skipped.ratio is None
    bench.print_table([skipped, bench.Row("learner", "17M", "tokens/s", [90.0], [100.0])])
    out = capsys.readouterr().out
    assert "time_to_reward" in out and "not run: TRL is not installed" in out
    assert "0.90x" in out


def test_unknown_benchmark_is_an_error(capsys):
    with pytest.raises(SystemExit):
        bench.main(["--only", "nope"])
    assert "unknown benchmark" in capsys.readouterr().err


def test_sizes_match_the_issue_and_compose():
    assert "model.tiny.hidden_size=1024" in bench.SIZES["134M"]
    assert "model.tiny.num_layers=8" in bench.SIZES["134M"]
    cfg = bench.root_config("17M", ["learner.num_ranks=1"])
    assert cfg.model.tiny.hidden_size == 512 and cfg.model.tiny.warmup_steps == 0
    assert cfg.learner.num_ranks == 1 and cfg.experiment == "grpo"


def test_scripts_import_only_the_package_and_common():
    """One way: a script imports rlhf and scripts/common.py; bench.py (the suite) also runs the
    benchmarks that have a module of their own; nothing in scripts/ imports bench.py."""
    import ast

    scripts = {p.stem: p for p in (ROOT / "scripts").glob("*.py")}
    suite = {"bench_cartpole", "bench_overhead", "bench_reward", "bench_trl"}
    for name, path in scripts.items():
        tree = ast.parse(path.read_text())
        imported = {
            a.name.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.Import)
            for a in n.names
        }
        imported |= {
            n.module.split(".")[0]
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        }
        local = imported & set(scripts)
        allowed = {"common"} | (suite if name == "bench" else set())
        assert local <= allowed, f"scripts/{name}.py imports {sorted(local - allowed)}"
    common = ast.parse(scripts["common"].read_text())
    assert not {
        n.module for n in ast.walk(common) if isinstance(n, ast.ImportFrom) and n.module in scripts
    }, "scripts/common.py imports another script"


def test_reward_bench_rows_compare_the_same_rewards():
    """bench.py's reward row on a small batch: both sides score (its measure() asserts they
    give the same rewards), one row per case with one time per rep on each side."""
    rows = bench.bench_reward(SimpleNamespace(quick=True, reps=1))
    assert [r.case.split(",")[0] for r in rows] == ["task", "user fn"]
    assert all(len(r.ours) == len(r.baseline) == 3 and r.ratio > 0 for r in rows)


def test_gpu_model_sizes_and_mfu():
    assert 0.45e9 < bench_gpu.count_params("0.5B") < 0.55e9
    assert 1.4e9 < bench_gpu.count_params("1.5B") < 1.7e9
    # 1e9 params at 1e5 tokens/s: 6e14 FLOP/s of a 1000 TFLOP/s peak = 60%
    assert bench_gpu.mfu(10**9, 1e5, 1000.0) == pytest.approx(0.6)
    assert bench_gpu.peak_for("NVIDIA H200") == 989.0 and bench_gpu.peak_for("mystery") is None


def test_gpu_benchmark_fails_clearly_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--sizes", "0.5B"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert "needs a CUDA GPU" in out.stderr and "Traceback" not in out.stderr


def test_metrics_tail_returns_each_complete_row_once(tmp_path):
    from common import MetricsTail

    path = tmp_path / "metrics.jsonl"
    tail = MetricsTail(path)
    assert tail.new_rows() == []  # the run has not written yet
    path.write_text('{"step": 1}\n{"step": 2}\n{"st')  # a writer mid-line
    assert [r["step"] for r, _ in tail.new_rows()] == [1, 2]
    with open(path, "a") as f:
        f.write('ep": 3}\n')
    assert [r["step"] for r, _ in tail.new_rows()] == [3]
    assert tail.new_rows() == []
