"""Observability: per-phase timers, secret scrubbing, the run's identity and the RunLogger
that feeds every sink once per step.

The pieces live one concept per module, and this one composes them:
- rlhf/progress.py: console lines, the start-up log, the progress line's step clock,
- rlhf/sinks.py: metrics.jsonl / samples.jsonl and the W&B run,
- rlhf/report.py: reading a run back, its summary and report.png,
- rlhf/sweep.py: the Hydra sweep summary,
- rlhf/wandb_offline.py: reading an offline W&B run's files.
The names scripts, tests and conf/config.yaml import from here stay importable from here.

Heavy imports (wandb, matplotlib) stay inside the functions that need them, so the trainer and
the unit tests import this module for free.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf.progress import StepClock, console
from rlhf.progress import fmt as _fmt
from rlhf.progress import fmt_duration as _fmt_duration
from rlhf.report import (
    PRIMARY_METRICS,
    phase_shares,
    plot_run,
    primary_metric_of,
    read_metrics,
    summarize,
)
from rlhf.sinks import STEP_KEY, JsonlSink, WandbSink
from rlhf.sweep import SweepSummary
from rlhf.wandb_offline import _wandb_records, read_offline_run

__all__ = [
    "PhaseTimer",
    "RunLogger",
    "scrub_secrets",
    "run_identity",
    "console",
    "PRIMARY_METRICS",
    "STEP_KEY",
    "phase_shares",
    "plot_run",
    "primary_metric_of",
    "read_metrics",
    "summarize",
    "SweepSummary",
    "read_offline_run",
    "_wandb_records",
]

log = logging.getLogger("rlhf")

# Keys whose values never leave the process. 'token' only when no letter follows, so that
# `max_new_tokens`, `tokenizer` or `perf/tokens_per_s` stay visible and `hf_token`, `authToken`
# do not.
_SECRET_KEY = re.compile(r"api_?key|secret|passw(or)?d|credential|token(?![a-z])", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Timing and secrets
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
        self._step_start: float | None = None

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


def scrub_secrets(obj: Any) -> Any:
    """A copy of `obj` (nested dicts / lists) in which every value under a secret-looking key is
    '***'. The config is logged to W&B and printed; keys and tokens must not be. Numbers, bools
    and None are no secrets and stay (`max_token_len: 512`, `api_key: null` = not set)."""
    if isinstance(obj, dict):
        return {
            k: "***" if _SECRET_KEY.search(str(k)) and not _plain(v) else scrub_secrets(v)
            for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [scrub_secrets(v) for v in obj]
    return obj


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float))


# --------------------------------------------------------------------------------------------
# Run identity
# --------------------------------------------------------------------------------------------


def run_identity(cfg) -> tuple[str, str | None, list[str]]:
    """(run name, W&B group, tags) for a RootConfig (or the DictConfig Hydra composed).

    Name: '<experiment>-<algo.name>-s<seed>-<HHMMSS>' unless logger.wandb.name is set.
    Group: logger.wandb.group if set; in a Hydra multirun the sweep folder (its last two path
    parts, so the default date/time layout stays unique across days); otherwise None.
    Tags: algo name, model ('tiny', the model folder's name, or 'mlp' and the env id), experiment,
    then logger.wandb.tags; duplicates dropped.
    """
    wb = cfg.logger.wandb
    name = wb.name or (
        f"{cfg.experiment}-{cfg.algo.name}-s{cfg.seed}-{datetime.datetime.now():%H%M%S}"
    )
    group = wb.group or _sweep_group()
    if cfg.model.kind == "mlp":
        model_tags = ["mlp", cfg.rollout.gym.env_id]
    else:
        model_tags = [Path(cfg.model.path.rstrip("/")).name if cfg.model.path else "tiny"]
    tags = [cfg.algo.name, *model_tags, cfg.experiment, *wb.tags]
    # W&B rejects empty tags and tags over 64 characters.
    tags = [str(t)[:64] for t in dict.fromkeys(tags) if str(t)]
    return name, group or None, tags


def _sweep_group() -> str | None:
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

    `log(step, ...)` is called once per trainer step and `finish(exit_code=...)` once at the
    end, on every exit path (Trainer.fit). Resuming in the same run folder appends after the
    rows the trainer kept (rlhf/jsonl.py truncates them to the resumed step), so the file stays
    one row per step.
    """

    def __init__(
        self,
        cfg,
        run_dir: Path,
        *,
        config: dict,
        total_steps: int,
        name: str,
        group: str | None,
        tags: list[str],
        primary_metric: str,
    ):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.total_steps = total_steps
        self.primary_metric = primary_metric
        self.config = scrub_secrets(config)
        self.jsonl = JsonlSink(self.run_dir)
        self.clock = StepClock(total_steps)
        self._start = time.perf_counter()
        self._finished = False
        self._update_kl: tuple[int, float] | None = None  # (step, value) last measured
        self.wandb = (
            None
            if cfg.wandb.mode == "disabled"
            else WandbSink(
                cfg.wandb, self.run_dir, config=self.config, name=name, group=group, tags=tags
            )
        )

    # --- per step

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.jsonl.log(step, metrics)
        if self.wandb is not None:
            self.wandb.log(step, metrics)
        self.clock.tick(metrics.get("timing/step_s"))
        # learner.diagnostics_every measures the update's KL on every N-th step only; between
        # measurements the progress line repeats the last one, with the step it was taken at.
        if "algo/update_kl" in metrics:
            self._update_kl = (step, metrics["algo/update_kl"])
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
        elif self._update_kl is not None:
            at, kl = self._update_kl
            parts.append(f"kl(update) {_fmt(kl)}" + ("" if at == step else f" @{at}"))
        parts += self.clock.describe(step)
        return " | ".join(parts)

    def log_samples(self, step: int, rows: list[dict[str, object]]) -> None:
        """A sample table every `samples_every` steps; the caller may call it every step."""
        every = self.cfg.samples_every
        if every <= 0 or step % every or not rows:
            return
        self.jsonl.log_samples(step, rows)
        if self.wandb is not None:
            self.wandb.log_samples(step, rows)

    # --- the end

    def finish(self, *, make_report: bool = True, exit_code: int = 0) -> dict[str, float]:
        """Print the end summary, write report.png, close W&B; returns the summary dict.
        `exit_code` != 0 marks the W&B run as failed (Trainer.fit's error and signal paths).
        A second call only returns the summary."""
        rows = read_metrics(self.run_dir)
        summary = summarize(rows, self.primary_metric)
        summary["time_s"] = time.perf_counter() - self._start
        if not self._finished:
            for line in self._summary_lines(rows, summary, exit_code):
                console(line)
        report = None
        if make_report and rows and not self._finished:
            try:
                report = plot_run(self.run_dir)
            except Exception as e:  # a broken plot must not turn a finished run into a failure
                log.warning("report.png not written: %s", e)
        if self.wandb is not None:
            sync_dir = self.wandb.finish(summary, report, exit_code)
            self.wandb = None
            if sync_dir is not None:
                console(f"W&B offline run: upload with `wandb sync {sync_dir}`")
        self._finished = True
        return summary

    def _summary_lines(
        self, rows: list[dict], summary: dict[str, float], exit_code: int
    ) -> list[str]:
        m = self.primary_metric
        ended = "done" if exit_code == 0 else f"ended with exit code {exit_code}"
        lines = [
            f"{ended}: {summary['steps']} steps in {_fmt_duration(summary['time_s'])} | "
            f"{m} first fifth {_fmt(summary['first_fifth'])} -> last fifth "
            f"{_fmt(summary['last_fifth'])} (rise {_fmt(summary['rise'])}, "
            f"final {_fmt(summary['final'])})"
        ]
        shares = phase_shares(rows)
        if shares:
            lines.append(
                "time per phase: "
                + ", ".join(
                    f"{p} {100 * s:.0f}%" for p, s in sorted(shares.items(), key=lambda x: -x[1])
                )
            )
        return lines
