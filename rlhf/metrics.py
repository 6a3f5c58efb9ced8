"""Observability: per-phase timers, metric reduction, the run's sinks and its reports.

This module owns what a run leaves behind for people to read:
- `metrics.jsonl` and `samples.jsonl` in the run folder (the contract in DESIGN.md),
- the W&B run (config, namespaced metrics against `trainer/step`, sample tables), offline
  whenever there is no API key,
- the console progress line and the end-of-run summary,
- `report.png` (`plot_run`) and, after a Hydra sweep, `sweep_summary.{csv,md}` (`SweepSummary`).

Heavy imports (wandb, matplotlib) stay inside the functions that need them, so the trainer and
the unit tests import this module for free.
"""

from __future__ import annotations

import collections
import contextlib
import csv
import datetime
import io
import json
import logging
import math
import netrc
import os
import re
import struct
import time
import zlib
from pathlib import Path
from typing import Any, Iterator, Optional
from urllib.parse import urlparse

from hydra.experimental.callback import Callback

log = logging.getLogger("rlhf")

# The metric the end summary, the report and the sweep table rank by, in order of preference.
PRIMARY_METRICS = ("reward/mean", "env/episode_return_mean")
STEP_KEY = "trainer/step"  # the x-axis of every W&B chart

# Keys whose values never leave the process. 'token' only when no letter follows, so that
# `max_new_tokens`, `tokenizer` or `perf/tokens_per_s` stay visible and `hf_token`, `authToken`
# do not.
_SECRET_KEY = re.compile(r"api_?key|secret|passw(or)?d|credential|token(?![a-z])", re.IGNORECASE)


def console(msg: str) -> None:
    """One line for the person watching. Through logging when something (Hydra) configured it to
    show INFO, so the line also lands in the run's log file; plain print otherwise, so it is
    never lost."""
    if log.isEnabledFor(logging.INFO) and log.hasHandlers():
        log.info(msg)
    else:
        print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# Timing and reduction
# --------------------------------------------------------------------------------------------


class PhaseTimer:
    """Times named phases of one step: `with timer.phase("rollout"): ...`; `timer.pop()` returns
    {"timing/rollout_s": 1.2, ..., "timing/step_s": total} and resets.

    A phase entered twice in one step accumulates. The step clock starts when the first phase
    of the step is entered (so set-up before the loop is not billed to step 1) and stops at
    `pop()`; work between phases that is not wrapped shows up as step time no phase explains.
    """

    def __init__(self) -> None:
        self._phases: dict[str, float] = {}
        self._step_start: Optional[float] = None

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self._step_start is None:
            self._step_start = start
        try:
            yield
        finally:
            self._phases[name] = self._phases.get(name, 0.0) + time.perf_counter() - start

    def pop(self) -> dict[str, float]:
        now = time.perf_counter()
        out = {f"timing/{k}_s": v for k, v in self._phases.items()}
        out["timing/step_s"] = now - self._step_start if self._step_start is not None else 0.0
        self._phases, self._step_start = {}, None
        return out


def reduce_mean(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean over `dicts`; a key missing from some dicts averages over those that have it
    (learner ranks or workers may report different keys)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            sums[k] = sums.get(k, 0.0) + float(v)
            counts[k] = counts.get(k, 0) + 1
    return {k: sums[k] / counts[k] for k in sums}


def scrub_secrets(obj: Any) -> Any:
    """A copy of `obj` (nested dicts / lists) in which every value under a secret-looking key is
    '***'. The config is logged to W&B and printed; keys and tokens must not be. Numbers, bools
    and None are no secrets and stay (`max_token_len: 512`, `api_key: null` = not set)."""
    if isinstance(obj, dict):
        return {k: "***" if _SECRET_KEY.search(str(k)) and not _plain(v) else scrub_secrets(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_secrets(v) for v in obj]
    return obj


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float))


# --------------------------------------------------------------------------------------------
# Run identity
# --------------------------------------------------------------------------------------------


def run_identity(cfg) -> tuple[str, Optional[str], list[str]]:
    """(run name, W&B group, tags) for a RootConfig (or the DictConfig Hydra composed).

    Name: '<experiment>-<algo.name>-s<seed>-<HHMMSS>' unless logger.wandb.name is set.
    Group: logger.wandb.group if set; in a Hydra multirun the sweep folder (its last two path
    parts, so the default date/time layout stays unique across days); otherwise None.
    Tags: algo name, model ('tiny', the model folder's name, or 'mlp' and the env id), experiment,
    then logger.wandb.tags; duplicates dropped.
    """
    wb = cfg.logger.wandb
    name = wb.name or (f"{cfg.experiment}-{cfg.algo.name}-s{cfg.seed}-"
                       f"{datetime.datetime.now():%H%M%S}")
    group = wb.group or _sweep_group()
    if cfg.model.kind == "mlp":
        model_tags = ["mlp", cfg.rollout.gym.env_id]
    else:
        model_tags = [Path(cfg.model.path.rstrip("/")).name if cfg.model.path else "tiny"]
    tags = [cfg.algo.name, *model_tags, cfg.experiment, *wb.tags]
    # W&B rejects empty tags and tags over 64 characters.
    tags = [str(t)[:64] for t in dict.fromkeys(tags) if str(t)]
    return name, group or None, tags


def _sweep_group() -> Optional[str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():  # called outside @hydra.main (tests, notebooks)
        return None
    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN:
        return None
    return "_".join(Path(hc.sweep.dir).parts[-2:])


# --------------------------------------------------------------------------------------------
# The run logger
# --------------------------------------------------------------------------------------------


class RunLogger:
    """Every sink of one run: metrics.jsonl, samples.jsonl, W&B, the console line, the summary.

    `log(step, ...)` is called once per trainer step. Resuming in the same run folder keeps the
    earlier rows of metrics.jsonl up to the resumed step, so the file stays one row per step.
    """

    def __init__(self, cfg, run_dir: Path, *, config: dict, total_steps: int, name: str,
                 group: Optional[str], tags: list[str], primary_metric: str):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.primary_metric = primary_metric
        self.config = scrub_secrets(config)
        self._metrics_path = self.run_dir / "metrics.jsonl"
        self._samples_path = self.run_dir / "samples.jsonl"
        self._metrics_file: Optional[io.TextIOWrapper] = None
        self._step_times: collections.deque[float] = collections.deque(maxlen=20)  # for the ETA
        self._last_log: Optional[float] = None
        self._start = time.perf_counter()
        self._finished = False
        self.wandb_run = self._init_wandb(name, group, tags)

    # --- W&B

    def _init_wandb(self, name: str, group: Optional[str], tags: list[str]):
        mode = self.cfg.wandb.mode
        if mode == "disabled":
            return None
        if mode == "online" and not _have_wandb_credentials():
            log.warning("W&B: logger.wandb.mode=online but no WANDB_API_KEY or ~/.netrc entry; "
                        "logging offline to %s (upload later with `wandb sync`)",
                        self.run_dir / "wandb")
            mode = "offline"
        import wandb

        wb = self.cfg.wandb
        kwargs = dict(project=wb.project, entity=wb.entity or None, name=name, group=group,
                      tags=tags, config=self.config, dir=str(self.run_dir), job_type="train",
                      # a run left open by a failed job of the same sweep process ends here
                      reinit="finish_previous",
                      # silent: no banners, and never an interactive login prompt
                      settings=wandb.Settings(silent=True))
        try:
            run = wandb.init(mode=mode, **kwargs)
        except Exception as e:  # an unreachable server must not stop training
            if mode != "online":
                raise
            log.warning("W&B: online init failed (%s); logging offline instead", e)
            run = wandb.init(mode="offline", **kwargs)
        # Every metric is plotted against the trainer step, also after a resume, when W&B's own
        # step of a new run would not match.
        run.define_metric(STEP_KEY)
        run.define_metric("*", step_metric=STEP_KEY)
        return run

    # --- per step

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        if self._metrics_file is None:
            for path in (self._metrics_path, self._samples_path):
                _drop_rows_from(path, step)  # a resumed run rewrites what follows its checkpoint
            self._metrics_file = open(self._metrics_path, "a", encoding="utf-8")
        row = {"step": step, **{k: _json_value(v) for k, v in metrics.items()}}
        self._metrics_file.write(json.dumps(row, allow_nan=False, default=str) + "\n")
        self._metrics_file.flush()  # a crashed run still leaves every finished step on disk

        if self.wandb_run is not None:
            self.wandb_run.log({**metrics, STEP_KEY: step}, step=step)

        step_s = metrics.get("timing/step_s")
        if step_s is None and self._last_log is not None:
            step_s = now - self._last_log
        if step_s is not None:
            self._step_times.append(float(step_s))
        self._last_log = now
        every = self.cfg.console_every
        if every > 0 and (step % every == 0 or step == self.total_steps):
            console(self._progress_line(step, metrics))

    def _progress_line(self, step: int, metrics: dict[str, float]) -> str:
        width = len(str(self.total_steps))
        parts = [f"step {step:>{width}}/{self.total_steps}"]
        if self.primary_metric in metrics:
            parts.append(f"{self.primary_metric} {_fmt(metrics[self.primary_metric])}")
        # KL to the reference model when there is one (kl_coef > 0), else the KL of each
        # update (old policy -> new), which is what keeps a run without a reference honest.
        if "algo/kl" in metrics:
            parts.append(f"kl {_fmt(metrics['algo/kl'])}")
        elif "algo/update_kl" in metrics:
            parts.append(f"kl(update) {_fmt(metrics['algo/update_kl'])}")
        if self._step_times:
            mean = sum(self._step_times) / len(self._step_times)
            parts.append(f"{mean:.2f} s/step")
            parts.append(f"ETA {_fmt_duration(mean * max(0, self.total_steps - step))}")
        return " | ".join(parts)

    def log_samples(self, step: int, rows: list[dict[str, object]]) -> None:
        """A sample table every `samples_every` steps; the caller may call it every step."""
        every = self.cfg.samples_every
        if every <= 0 or step % every or not rows:
            return
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(self._samples_path, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({"step": step, **{k: _json_value(v) for k, v in r.items()}},
                                   allow_nan=False, default=str) + "\n")
        if self.wandb_run is not None:
            import wandb

            data = [[_table_value(r.get(c)) for c in columns] for r in rows]
            self.wandb_run.log({"samples": wandb.Table(columns=columns, data=data),
                                STEP_KEY: step}, step=step)

    # --- the end

    def finish(self, *, make_report: bool = True, exit_code: int = 0) -> dict[str, float]:
        """Print the end summary, write report.png, close W&B; returns the summary dict.
        `exit_code` != 0 marks the W&B run as failed (call it from the trainer's error path)."""
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        rows = read_metrics(self.run_dir)
        summary = summarize(rows, self.primary_metric)
        summary["time_s"] = time.perf_counter() - self._start
        if not self._finished:
            for line in self._summary_lines(rows, summary):
                console(line)
        report = None
        if make_report and rows and not self._finished:
            try:
                report = plot_run(self.run_dir)
            except Exception as e:  # a broken plot must not turn a finished run into a failure
                log.warning("report.png not written: %s", e)
        if self.wandb_run is not None:
            for k, v in summary.items():
                self.wandb_run.summary[f"summary/{k}"] = v
            if report is not None:
                import wandb

                self.wandb_run.summary["report"] = wandb.Image(str(report))
            offline = self.wandb_run.settings.mode == "offline"
            sync_dir = Path(self.wandb_run.dir).parent  # <run_dir>/wandb/offline-run-<id>
            self.wandb_run.finish(exit_code=exit_code)
            _wait_for_exit_record(sync_dir / f"run-{self.wandb_run.id}.wandb")
            self.wandb_run = None
            if offline:
                console(f"W&B offline run: upload with `wandb sync {sync_dir}`")
        self._finished = True
        return summary

    def _summary_lines(self, rows: list[dict], summary: dict[str, float]) -> list[str]:
        m = self.primary_metric
        lines = [f"done: {summary['steps']} steps in {_fmt_duration(summary['time_s'])} | "
                 f"{m} first fifth {_fmt(summary['first_fifth'])} -> last fifth "
                 f"{_fmt(summary['last_fifth'])} (rise {_fmt(summary['rise'])}, "
                 f"final {_fmt(summary['final'])})"]
        shares = phase_shares(rows)
        if shares:
            lines.append("time per phase: " + ", ".join(
                f"{p} {100 * s:.0f}%" for p, s in sorted(shares.items(), key=lambda x: -x[1])))
        return lines


def _have_wandb_credentials() -> bool:
    """What wandb would find without asking: the env key, an identity token, or a netrc entry for
    the W&B host. Checked here so that a missing key becomes offline mode, never a prompt."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _json_value(v: Any) -> Any:
    """Plain JSON for metrics.jsonl: numpy / torch scalars become numbers, NaN and inf null."""
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, RuntimeError):  # not a scalar
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _table_value(v: Any) -> Any:
    v = _json_value(v)
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def _fmt(v: Any) -> str:
    try:
        return f"{float(v):.3g}"
    except (TypeError, ValueError):
        return str(v)


def _fmt_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _drop_rows_from(path: Path, step: int) -> None:
    """Remove rows with `step` >= step (left by a run that got further than its checkpoint)."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    keep = [ln for ln in lines if ln.strip() and _row_step(ln) < step]
    if len(keep) != len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        os.replace(tmp, path)


def _row_step(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):  # a torn last line from a crash
        return math.inf


# --------------------------------------------------------------------------------------------
# Reading a run back: metrics.jsonl, summaries, the report
# --------------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of run_dir/metrics.jsonl (null read as NaN); a torn last line is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        rows.append({k: math.nan if v is None else v for k, v in row.items()})
    return rows


def primary_metric_of(rows: list[dict]) -> str:
    """'reward/mean' for LLM runs, 'env/episode_return_mean' for gym runs."""
    for m in PRIMARY_METRICS:
        if any(m in r for r in rows):
            return m
    return PRIMARY_METRICS[0]


def summarize(rows: list[dict], metric: str) -> dict[str, float]:
    """{"first_fifth", "last_fifth", "rise", "final", "steps"} of `metric` over the rows:
    means over the first and the last fifth of the steps that report it (single steps are noisy;
    the Optuna objective is `last_fifth`)."""
    vals = [float(r[metric]) for r in rows
            if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])]
    out = {"first_fifth": math.nan, "last_fifth": math.nan, "rise": math.nan,
           "final": math.nan, "steps": len(rows)}
    if vals:
        k = max(1, len(vals) // 5)
        first, last = sum(vals[:k]) / k, sum(vals[-k:]) / k
        out.update(first_fifth=first, last_fifth=last, rise=last - first, final=vals[-1])
    return out


def phase_shares(rows: list[dict]) -> dict[str, float]:
    """Each phase's share of the total step time, from the timing/<phase>_s keys."""
    total = sum(r.get("timing/step_s", 0.0) for r in rows if _finite(r.get("timing/step_s")))
    if total <= 0:
        return {}
    sums: dict[str, float] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("timing/") and k.endswith("_s") and k != "timing/step_s" and _finite(v):
                name = k[len("timing/"):-2]
                sums[name] = sums.get(name, 0.0) + v
    return {k: v / total for k, v in sums.items()}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_run(run_dir: Path) -> Path:
    """run_dir/report.png from run_dir/metrics.jsonl: a 2x2 figure with the primary metric (raw
    and smoothed), the KL, the response / episode length and the stacked time per phase."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    primary = primary_metric_of(rows)
    length = ("rollout/response_len_mean" if any("rollout/response_len_mean" in r for r in rows)
              else "env/episode_len_mean")
    steps = [r.get("step", i) for i, r in enumerate(rows)]

    fig = Figure(figsize=(12, 8), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (ax_p, ax_kl), (ax_len, ax_t) = fig.subplots(2, 2)
    s = summarize(rows, primary)
    fig.suptitle(f"{run_dir.name}: {primary} {_fmt(s['first_fifth'])} -> {_fmt(s['last_fifth'])} "
                 f"(first -> last fifth of {s['steps']} steps)")

    def curve(ax, key, title, smooth=False):
        xs, ys = _series(rows, steps, key)
        ax.set_title(title)
        ax.set_xlabel("trainer step")
        if not xs:
            _no_data(ax, key)
            return
        ax.plot(xs, ys, color="tab:blue", alpha=0.35 if smooth else 1.0, lw=1, label="per step")
        if smooth and len(ys) > 2:
            ax.plot(xs, _ema(ys, max(2, len(ys) // 20)), color="tab:blue", lw=2, label="smoothed")
            ax.legend(loc="best", fontsize=8)
        ax.grid(alpha=0.3)

    curve(ax_p, primary, primary, smooth=True)
    if any("algo/kl" in r for r in rows):  # KL to the reference model, when there is one
        curve(ax_kl, "algo/kl", "KL to reference (algo/kl)")
    else:
        curve(ax_kl, "algo/update_kl", "KL(old || new) per update (algo/update_kl)")
    curve(ax_len, length, length)

    ax_t.set_title("time per step by phase")
    ax_t.set_xlabel("trainer step")
    ax_t.set_ylabel("seconds")
    phases = sorted({k for r in rows for k in r
                     if k.startswith("timing/") and k.endswith("_s") and k != "timing/step_s"})
    if phases:
        ys = [[r.get(p, 0.0) if _finite(r.get(p)) else 0.0 for r in rows] for p in phases]
        labels = [p[len("timing/"):-2] for p in phases]
        # Step time no phase accounts for (logging, checkpoints) is shown, not hidden.
        other = [max(0.0, r["timing/step_s"] - sum(col)) if _finite(r.get("timing/step_s")) else 0.0
                 for r, col in zip(rows, zip(*ys))]
        if any(v > 1e-3 for v in other):
            ys.append(other)
            labels.append("other")
        ax_t.stackplot(steps, ys, labels=labels, alpha=0.85)
        handles, names = ax_t.get_legend_handles_labels()
        ax_t.legend(handles[::-1], names[::-1], loc="upper right", fontsize=8)  # as stacked
        ax_t.grid(alpha=0.3)
    else:
        _no_data(ax_t, "timing/*_s")

    out = run_dir / "report.png"
    fig.savefig(out)
    return out


def _series(rows, steps, key) -> tuple[list, list]:
    pairs = [(x, float(r[key])) for x, r in zip(steps, rows) if _finite(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _ema(ys: list[float], span: int) -> list[float]:
    alpha, out, acc = 2.0 / (span + 1), [], ys[0]
    for y in ys:
        acc = alpha * y + (1 - alpha) * acc
        out.append(acc)
    return out


def _no_data(ax, key: str) -> None:
    ax.text(0.5, 0.5, f"no data\n({key} not logged)", ha="center", va="center",
            transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


# --------------------------------------------------------------------------------------------
# Sweeps
# --------------------------------------------------------------------------------------------


class SweepSummary(Callback):
    """Hydra callback (conf/config.yaml: hydra.callbacks.sweep_summary). After a multirun, one
    row per job: its folder, its overrides, steps, final and last-fifth primary metric; written
    to sweep_summary.csv (all overrides) and sweep_summary.md (the overrides that differ between
    jobs, the shared ones above the table) in the sweep folder, and printed."""

    COLUMNS = ("job", "overrides", "steps", "final", "last_fifth")

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        rows = self.collect(sweep_dir)
        if not rows:
            console(f"sweep summary: no job folder with metrics.jsonl under {sweep_dir}")
            return
        with open(sweep_dir / "sweep_summary.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self.COLUMNS)
            w.writeheader()
            w.writerows({**r, "overrides": " ".join(r["overrides"])} for r in rows)
        table = self.markdown(rows)
        (sweep_dir / "sweep_summary.md").write_text(table, encoding="utf-8")
        console(f"sweep summary ({sweep_dir}):\n{table}")

    @staticmethod
    def collect(sweep_dir: Path) -> list[dict]:
        """One dict per job folder with a metrics.jsonl; 'overrides' is a list of strings."""
        import yaml  # PyYAML comes with OmegaConf

        jobs = [p.parent for p in Path(sweep_dir).glob("*/metrics.jsonl")]
        # Job folders are numbers: 2 sorts before 10.
        jobs.sort(key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))
        out = []
        for job in jobs:
            over = job / ".hydra" / "overrides.yaml"
            overrides = yaml.safe_load(over.read_text()) if over.exists() else None
            rows = read_metrics(job)
            s = summarize(rows, primary_metric_of(rows))
            out.append({"job": job.name, "overrides": [str(o) for o in overrides or []],
                        "steps": s["steps"], "final": s["final"], "last_fifth": s["last_fifth"]})
        return out

    @classmethod
    def markdown(cls, rows: list[dict]) -> str:
        # Overrides every job shares (+experiment=..., budgets) say nothing about the difference.
        shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
        lines = [f"shared overrides: `{' '.join(o for o in rows[0]['overrides'] if o in shared)}`",
                 ""] if shared else []
        lines += ["| " + " | ".join(cls.COLUMNS) + " |", "|" + "---|" * len(cls.COLUMNS)]
        for r in rows:
            cells = {**r, "overrides": " ".join(o for o in r["overrides"] if o not in shared),
                     "final": _fmt(r["final"]), "last_fifth": _fmt(r["last_fifth"])}
            lines.append("| " + " | ".join(str(cells[c]).replace("|", "\\|")
                                           for c in cls.COLUMNS) + " |")
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Reading an offline W&B run (tests, and checking what a run would upload)
# --------------------------------------------------------------------------------------------

# The .wandb file is a LevelDB-style log: a 7-byte file header (':W&B', magic 0xBEE1, version 0),
# then 32 KiB blocks of records, each with a 7-byte header (crc32, length, type) and a piece of a
# serialized wandb.proto Record; records longer than a block are split FIRST/MIDDLE.../LAST.
# wandb >= 0.2x no longer ships a Python reader (wandb-core, in Go, reads it), and an offline run
# writes neither files/config.yaml nor files/wandb-summary.json, so this is the way to read it.
_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:_HEADER])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, parts = _HEADER, []
    while True:
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer too short for a header: padding
            pos += _BLOCK - pos % _BLOCK
        if pos + _HEADER > len(data):
            return
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        pos += _HEADER + length
        if kind == 0 and length == 0:  # zero padding at the end of a block
            continue
        if len(chunk) < length or zlib.crc32(chunk, zlib.crc32(bytes([kind]))) != crc:
            return  # torn tail of a run that is still being written or was killed
        parts = [chunk] if kind in (_FULL, _FIRST) else parts + [chunk]
        if kind in (_FULL, _LAST):
            record = pb.Record()
            record.ParseFromString(b"".join(parts))
            yield record


def _wait_for_exit_record(path: Path, timeout_s: float = 10.0) -> bool:
    """Wait until the transaction log holds the run's exit record. wandb-core (0.31, offline)
    may still be flushing its last block when run.finish() returns; waiting here means a finished
    RunLogger leaves a complete, syncable run folder for whatever reads it next in-process."""
    deadline = time.monotonic() + timeout_s
    while True:
        if path.exists() and any(r.WhichOneof("record_type") == "exit"
                                 for r in _wandb_records(path)):
            return True
        if time.monotonic() > deadline:
            log.warning("W&B: %s has no exit record after %.0f s", path, timeout_s)
            return False
        time.sleep(0.05)


def _item_path(item) -> list[str]:
    return [item.key] if item.key else list(item.nested_key)


def _set_path(d: dict, path: list[str], value: Any) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def read_offline_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """(config, history) of the latest W&B run under run_dir/wandb/. `config` is what W&B holds
    (without its '_wandb' entry); `history` is one dict per logged step, with W&B's own '_step',
    '_runtime', '_timestamp' and media (tables) as their JSON descriptors."""
    runs = sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"), key=lambda p: p.parent.name)
    if not runs:
        raise FileNotFoundError(f"no W&B run under {Path(run_dir) / 'wandb'}")
    config: dict = {}
    history: list[dict] = []
    for record in _wandb_records(runs[-1]):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):
            cfg = record.run.config if kind == "run" else record.config
            for item in cfg.update:
                _set_path(config, _item_path(item), json.loads(item.value_json))
            for item in cfg.remove:
                config.pop(_item_path(item)[0], None)
        elif kind == "history":
            row: dict = {}
            for item in record.history.item:
                _set_path(row, _item_path(item), json.loads(item.value_json))
            history.append(row)
    config.pop("_wandb", None)
    return config, history
