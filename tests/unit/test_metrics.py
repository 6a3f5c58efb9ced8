"""rlhf.metrics and the modules it composes (progress, sinks, report, sweep, wandb_offline):
timers, reductions, the run's sinks (metrics.jsonl, W&B offline files, console), the step clock,
the report and the sweep table. W&B runs are real (offline) and are read back from their files."""

import json
import logging
import math
import re
import shutil
import time

import numpy as np
import pytest
from omegaconf import OmegaConf

from rlhf import jsonl, metrics
from rlhf.config import LoggerConfig, RootConfig, WandbConfig
from rlhf.metrics import PhaseTimer, RunLogger, run_identity, scrub_secrets
from rlhf.progress import StartupLog, StepClock
from rlhf.report import plot_run, read_metrics, summarize
from rlhf.sweep import SweepSummary
from rlhf.wandb_offline import read_offline_run


@pytest.fixture(autouse=True)
def wandb_env(tmp_path, monkeypatch):
    """Offline, silent, and nowhere to go: a test that tried to go online would fail locally."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))


def make_logger(run_dir, mode="offline", total_steps=5, config=None, **logger_kw):
    cfg = LoggerConfig(wandb=WandbConfig(mode=mode), **logger_kw)
    return RunLogger(
        cfg,
        run_dir,
        config=config or {},
        total_steps=total_steps,
        name="test-run",
        group="tests",
        tags=["unit"],
        primary_metric="reward/mean",
    )


# --- timing and reduction ---------------------------------------------------------------------


def test_phase_timer_accumulates_and_resets():
    t = PhaseTimer()
    with t.phase("rollout"):
        time.sleep(0.01)
    with t.phase("update"):
        time.sleep(0.005)
    with t.phase("rollout"):  # a phase entered twice in a step adds up
        time.sleep(0.01)
    out = t.pop()
    assert set(out) == {"timing/rollout_s", "timing/update_s", "timing/step_s"}
    assert out["timing/rollout_s"] >= 0.02 and out["timing/update_s"] >= 0.005
    assert out["timing/step_s"] >= out["timing/rollout_s"] + out["timing/update_s"]
    assert t.pop() == {"timing/step_s": 0.0}


def test_phase_timer_records_a_failing_phase():
    t = PhaseTimer()
    with pytest.raises(RuntimeError), t.phase("reward"):
        raise RuntimeError
    assert "timing/reward_s" in t.pop()


# --- secrets and identity -----------------------------------------------------------------------


def test_scrub_secrets_nested():
    cfg = {
        "reward": {
            "remote": {
                "api_key": "sk-1",
                "url": "http://x",
                "headers": [{"Authorization_Token": "t"}, {"x": 1}],
            }
        },
        "HF_TOKEN": "hf_abc",
        "wandbApiKey": "k",
        "db": {"PassWord": "p", "passwd": "p"},
        "client_secret": "s",
        "aws_credentials": {"id": "a"},
        "authToken": "t",
        "rollout": {"max_new_tokens": 8, "tokenizer": "gpt2"},
        "perf/tokens_per_s": 1.0,
        "max_token_len": 512,
        "unset": {"api_key": None},
    }
    out = scrub_secrets(cfg)
    assert out["reward"]["remote"] == {
        "api_key": "***",
        "url": "http://x",
        "headers": [{"Authorization_Token": "***"}, {"x": 1}],
    }
    for k in ("HF_TOKEN", "wandbApiKey", "client_secret", "aws_credentials", "authToken"):
        assert out[k] == "***", k
    assert out["db"] == {"PassWord": "***", "passwd": "***"}
    # Words that merely contain 'token' are configuration, not secrets.
    assert out["rollout"] == {"max_new_tokens": 8, "tokenizer": "gpt2"}
    assert out["perf/tokens_per_s"] == 1.0
    # Numbers and None are no secrets: shown, so that config stays readable.
    assert out["max_token_len"] == 512 and out["unset"] == {"api_key": None}
    assert cfg["HF_TOKEN"] == "hf_abc"  # the input is not modified


def test_run_identity_defaults_and_overrides():
    cfg = RootConfig(experiment="grpo", seed=3)
    name, group, tags = run_identity(cfg)
    assert re.fullmatch(r"grpo-grpo-s3-\d{6}", name)
    assert group is None  # not in a Hydra multirun
    assert tags == ["grpo", "tiny"]  # experiment == algo name: no duplicate

    cfg.model.path = "/models/Qwen2.5-0.5B/"
    cfg.logger.wandb.name, cfg.logger.wandb.group = "mine", "g1"
    cfg.logger.wandb.tags = ["extra"]
    assert run_identity(cfg) == ("mine", "g1", ["grpo", "Qwen2.5-0.5B", "extra"])

    gym = RootConfig(experiment="cartpole_ppo")
    gym.model.kind, gym.algo.name = "mlp", "ppo"
    assert run_identity(gym)[2] == ["ppo", "mlp", "CartPole-v1", "cartpole_ppo"]


def test_run_identity_groups_a_multirun_by_its_sweep_folder():
    from hydra.conf import HydraConf
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra = OmegaConf.structured(HydraConf)
    hydra.mode = RunMode.MULTIRUN
    hydra.sweep.dir = "multirun/2026-01-02/03-04-05"
    HydraConfig.instance().set_config(OmegaConf.create({"hydra": hydra}))
    try:
        assert run_identity(RootConfig())[1] == "2026-01-02_03-04-05"
    finally:
        HydraConfig.instance().cfg = None


# --- the run logger -------------------------------------------------------------------------------


def llm_metrics(step):
    return {
        "reward/mean": step / 10,
        "algo/kl": 0.001 * step,
        "perf/tokens_per_s": 100.0 + step,
        "rollout/response_len_mean": 6.0,
        "timing/rollout_s": 0.3,
        "timing/update_s": 0.1,
        "timing/step_s": 0.5,
    }


def test_offline_run_logs_config_history_and_samples(tmp_path, capsys):
    run_dir = tmp_path / "run"
    config = {
        "seed": 1,
        "algo": {"lr": 1e-3},
        "reward": {"remote": {"api_key": "sk-SECRET"}},
        # over one 32 KiB block of the transaction log: a record split across blocks
        "data": {"note": "x" * 70_000},
    }
    logger = make_logger(run_dir, total_steps=5, config=config, samples_every=2)
    for step in range(1, 6):
        logger.log(step, llm_metrics(step))
        logger.log_samples(
            step,
            [
                {"prompt": "1+1=", "response": "2", "reward": 1.0},
                {"prompt": "2+2=", "response": "5", "reward": np.float64(0)},
            ],
        )
    summary = logger.finish()

    assert summary["steps"] == 5 and summary["final"] == pytest.approx(0.5)
    assert summary["first_fifth"] == pytest.approx(0.1)
    assert summary["last_fifth"] == pytest.approx(0.5)
    assert summary["rise"] == pytest.approx(0.4)
    assert (run_dir / "report.png").stat().st_size > 10_000

    wb_config, history = read_offline_run(run_dir)
    assert wb_config["reward"]["remote"]["api_key"] == "***"
    assert wb_config["algo"] == {"lr": 1e-3} and wb_config["data"]["note"] == "x" * 70_000
    assert "sk-SECRET" not in json.dumps(wb_config)
    assert "sk-SECRET" not in "".join(
        p.read_text(errors="replace")
        for p in run_dir.rglob("*")
        if p.is_file() and p.suffix != ".png"
    )
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert [h["trainer/step"] for h in history] == [1, 2, 3, 4, 5]
    for h, r in zip(history, rows):
        for k in ("reward/mean", "perf/tokens_per_s", "timing/rollout_s", "algo/kl"):
            assert h[k] == pytest.approx(r[k]), k
    assert [h["trainer/step"] for h in history if "samples" in h] == [2, 4]
    assert all(h["samples"]["_type"] == "table-file" for h in history if "samples" in h)
    samples = jsonl.read(run_dir / "samples.jsonl")
    assert [s["step"] for s in samples] == [2, 2, 4, 4] and samples[1]["reward"] == 0.0

    out = capsys.readouterr().out
    assert re.search(r"step 5/5 \| reward/mean 0\.5 \| kl 0\.005 \| [\d.]+ s/step \| ETA 0s", out)
    assert "rollout 60%" in out and "update 20%" in out and "wandb sync" in out

    # A transaction log cut mid-record (a killed run) reads up to the cut.
    wandb_file = next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    data = wandb_file.read_bytes()
    shutil.rmtree(run_dir / "wandb")
    cut = run_dir / "wandb" / "offline-run-x" / "run-x.wandb"
    cut.parent.mkdir(parents=True)
    cut.write_bytes(data[: len(data) * 2 // 3])
    assert len(read_offline_run(run_dir)[1]) < 5


def test_wandb_files_go_to_the_run_folder(tmp_path):
    logger = make_logger(tmp_path / "run", total_steps=1)
    logger.log(1, {"reward/mean": 1.0})
    logger.finish(make_report=False)
    assert list((tmp_path / "run").glob("wandb/offline-run-*/run-*.wandb"))
    assert not (tmp_path / "wandb_dir").exists()  # WANDB_DIR does not override the run folder


def test_disabled_writes_no_wandb_files(tmp_path):
    logger = make_logger(tmp_path, mode="disabled", total_steps=3)
    assert logger.wandb is None
    for step in range(1, 4):
        logger.log(step, {"reward/mean": float(step)})
    logger.log_samples(20, [{"a": 1}])  # samples_every=20 by default
    assert logger.finish(make_report=False)["final"] == 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "samples.jsonl"]


def test_online_without_a_key_goes_offline_with_one_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    logger = make_logger(tmp_path, mode="online", total_steps=1)
    logger.log(1, {"reward/mean": 1.0})
    logger.finish(make_report=False)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "offline" in warnings[0].getMessage()
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_metrics_jsonl_values(tmp_path):
    logger = make_logger(tmp_path, mode="disabled", total_steps=2, console_every=0)
    logger.log(
        1, {"reward/mean": float("nan"), "a": np.float32(0.5), "b": float("inf"), "n": np.int64(3)}
    )
    line = (tmp_path / "metrics.jsonl").read_text().splitlines()[0]
    assert json.loads(line) == {"step": 1, "reward/mean": None, "a": 0.5, "b": None, "n": 3}
    assert math.isnan(read_metrics(tmp_path)[0]["reward/mean"])
    logger.finish(make_report=False)


def test_resume_rewrites_steps_after_the_checkpoint(tmp_path):
    first = make_logger(tmp_path, mode="disabled", total_steps=10, console_every=0, samples_every=1)
    for step in range(1, 7):
        first.log(step, {"reward/mean": float(step)})
        first.log_samples(step, [{"response": str(step)}])
    first.finish(make_report=False)
    # resumed from a checkpoint at step 4 (Trainer.fit truncates): steps 5 and 6 are done again
    jsonl.truncate_run(tmp_path, 4)
    second = make_logger(tmp_path, mode="disabled", total_steps=10, console_every=0)
    for step in range(5, 8):
        second.log(step, {"reward/mean": 10.0 * step})
    second.finish(make_report=False)
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6, 7]
    assert rows[4]["reward/mean"] == 50.0
    samples = [r["step"] for r in jsonl.read(tmp_path / "samples.jsonl")]
    assert samples == [1, 2, 3, 4]


def test_console_line_every_n_steps_with_eta(tmp_path, capsys, monkeypatch):
    # Wall clock: the first step takes 30 s (warm-ups), then 0.5 s per step.
    times = iter([0.0] + [30.0 + 0.5 * i for i in range(10)])
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: next(times, 100.0))
    logger = make_logger(tmp_path, mode="disabled", total_steps=200, console_every=5)
    logger.log(1, {"reward/mean": 0.41, "timing/step_s": 30.0})
    for step in range(2, 11):
        logger.log(step, {"reward/mean": 0.41, "timing/step_s": 0.5})
    lines = capsys.readouterr().out.splitlines()
    # The warm-up step does not set the pace: 0.5 s/step, not (30 + 9 * 0.5) / 10.
    assert lines == [
        f"step {s:>3}/200 | reward/mean 0.41 | 0.50 s/step | ETA {eta}"
        for s, eta in ((5, "1m38s"), (10, "1m35s"))
    ]
    logger.finish(make_report=False)


def test_console_repeats_the_last_update_kl_with_its_step_between_measurements(tmp_path, capsys):
    # learner.diagnostics_every=10 measures algo/update_kl on steps 1, 10, 20, ... only.
    logger = make_logger(tmp_path, mode="disabled", total_steps=12, console_every=1)
    for step in range(1, 13):
        kl = {"algo/update_kl": 0.01 * step} if step in (1, 10) else {}
        logger.log(step, {"reward/mean": 0.5, "timing/step_s": 0.5, **kl})
    kls = [line.split(" | ")[2] for line in capsys.readouterr().out.splitlines()]
    assert kls[0] == "kl(update) 0.01" and kls[1] == kls[8] == "kl(update) 0.01 @1"
    assert kls[9] == "kl(update) 0.1" and kls[11] == "kl(update) 0.1 @10"
    logger.finish(make_report=False)


def test_step_clock_first_step_is_warm_up_and_median_resists_a_slow_step():
    clock = StepClock(total_steps=100)
    assert clock.describe(0) == [] and clock.eta(0) is None
    clock.tick(8.0, now=8.0)  # step 1: 8 s of first-call warm-ups
    assert clock.warming_up and clock.eta(1) is None
    assert clock.describe(1) == ["8.00 s first step (warm-up; ETA from step 2)"]
    now = 8.0
    for step_s in (0.2, 0.2, 5.0, 0.2, 0.2):  # step 4 saved a checkpoint
        now += step_s
        clock.tick(0.2, now=now)
    assert clock.seconds_per_step() == pytest.approx(0.2)
    assert clock.eta(6) == pytest.approx(0.2 * 94)
    assert clock.describe(6) == ["0.20 s/step", "ETA 19s"]


def test_startup_log_prints_elapsed_seconds(capsys):
    log = StartupLog(t0=time.perf_counter() - 2.0)
    log.say("starting Ray")
    out = capsys.readouterr().out
    assert re.fullmatch(r"\[startup +2\.\ds\] starting Ray\n", out)


def test_public_names_stay_importable_from_metrics():
    # scripts/plot_run.py, tests/e2e and conf/config.yaml (rlhf.metrics.SweepSummary) use these.
    for name in (
        "plot_run",
        "read_metrics",
        "summarize",
        "SweepSummary",
        "read_offline_run",
        "_wandb_records",
        "RunLogger",
        "PhaseTimer",
        "run_identity",
        "console",
    ):
        assert hasattr(metrics, name), name


def test_summarize_fifths():
    rows = [{"step": i, "reward/mean": float(i)} for i in range(1, 11)]
    rows.append({"step": 11})  # a step without the metric
    s = summarize(rows, "reward/mean")
    assert (s["first_fifth"], s["last_fifth"], s["rise"], s["final"], s["steps"]) == (
        1.5,
        9.5,
        8.0,
        10.0,
        11,
    )
    assert math.isnan(summarize([], "reward/mean")["last_fifth"])


# --- report and sweep -----------------------------------------------------------------------------


def write_metrics(run_dir, rows):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.parametrize("kind", ["llm", "gym"])
def test_plot_run_writes_a_png(tmp_path, kind):
    if kind == "llm":
        rows = [{"step": s, **llm_metrics(s)} for s in range(1, 41)]
    else:  # no KL, and no return before the first episodes finish
        rows = [
            {
                "step": s,
                "env/episode_return_mean": None if s < 3 else 10.0 + s,
                "env/episode_len_mean": 10.0 + s,
                "timing/rollout_s": 0.2,
                "timing/update_s": 0.1,
                "timing/step_s": 0.35,
            }
            for s in range(1, 41)
        ]
    write_metrics(tmp_path, rows)
    out = plot_run(tmp_path)
    assert out == tmp_path / "report.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_run_with_nothing_logged(tmp_path):
    write_metrics(tmp_path, [{"step": 1}])
    assert plot_run(tmp_path).exists()


def test_sweep_summary_table(tmp_path, capsys):
    for job, (lr, rewards) in enumerate(
        [("1e-3", [0.1, 0.2, 0.3, 0.4, 0.5]), ("3e-3", [0.1, 0.1, 0.2, 0.2, 0.3])]
    ):
        job_dir = tmp_path / str(job)
        write_metrics(job_dir, [{"step": i + 1, "reward/mean": r} for i, r in enumerate(rewards)])
        (job_dir / ".hydra").mkdir()
        (job_dir / ".hydra" / "overrides.yaml").write_text(f"- +experiment=grpo\n- algo.lr={lr}\n")
    (tmp_path / "multirun.yaml").write_text("{}")
    SweepSummary().on_multirun_end(
        config=OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    )

    md = (tmp_path / "sweep_summary.md").read_text()
    assert "shared overrides: `+experiment=grpo`" in md
    assert "| 0 | algo.lr=1e-3 | 5 | 0.5 | 0.5 |" in md
    assert "| 1 | algo.lr=3e-3 | 5 | 0.3 | 0.3 |" in md
    csv_lines = (tmp_path / "sweep_summary.csv").read_text().splitlines()
    assert csv_lines[0] == "job,overrides,steps,final,last_fifth"
    assert csv_lines[1] == "0,+experiment=grpo algo.lr=1e-3,5,0.5,0.5"
    assert len(csv_lines) == 3
    assert "| 1 | algo.lr=3e-3 |" in capsys.readouterr().out
