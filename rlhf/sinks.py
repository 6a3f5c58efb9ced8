"""Where a run's metrics go: metrics.jsonl / samples.jsonl in the run folder, and W&B.

Both sinks take already-scrubbed values (RunLogger scrubs the config). wandb is imported only
when a W&B sink is made, so the trainer and unit tests import this module for free.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from rlhf import jsonl

log = logging.getLogger("rlhf")

STEP_KEY = "trainer/step"  # the x-axis of every W&B chart


class JsonlSink:
    """metrics.jsonl (one row per step) and samples.jsonl in the run folder. A resumed run's
    trainer truncates them to its checkpoint's step first (rlhf/jsonl.py)."""

    def __init__(self, run_dir: Path):
        self.metrics_path = Path(run_dir) / jsonl.METRICS
        self.samples_path = Path(run_dir) / jsonl.SAMPLES

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        jsonl.append(self.metrics_path, [{"step": step, **metrics}])

    def log_samples(self, step: int, rows: list[dict[str, object]]) -> None:
        jsonl.append(self.samples_path, [{"step": step, **r} for r in rows])


class WandbSink:
    """One W&B run: config, namespaced metrics against `trainer/step`, sample tables, the
    summary. Offline whenever there is no API key (never an interactive prompt)."""

    def __init__(
        self, cfg, run_dir: Path, *, config: dict, name: str, group: str | None, tags: list[str]
    ):
        mode = cfg.mode
        if mode == "online" and not have_wandb_credentials():
            log.warning(
                "W&B: logger.wandb.mode=online but no WANDB_API_KEY or ~/.netrc entry; "
                "logging offline to %s (upload later with `wandb sync`)",
                Path(run_dir) / "wandb",
            )
            mode = "offline"
        import wandb

        kwargs = dict(
            project=cfg.project,
            entity=cfg.entity or None,
            name=name,
            group=group,
            tags=tags,
            config=config,
            dir=str(run_dir),
            job_type="train",
            # a run left open by a failed job of the same sweep process ends here
            reinit="finish_previous",
            # silent: no banners, and never an interactive login prompt
            settings=wandb.Settings(silent=True),
        )
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
        self.run = run

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        self.run.log({**metrics, STEP_KEY: step}, step=step)

    def log_samples(self, step: int, rows: list[dict[str, object]]) -> None:
        import wandb

        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = [[table_value(r.get(c)) for c in columns] for r in rows]
        self.run.log(
            {"samples": wandb.Table(columns=columns, data=data), STEP_KEY: step}, step=step
        )

    def finish(self, summary: dict[str, float], report: Path | None, exit_code: int) -> Path | None:
        """Write the summary (and report image), close the run; returns the offline run folder
        to `wandb sync`, or None when the run was online."""
        from rlhf.wandb_offline import wait_for_exit_record

        for k, v in summary.items():
            self.run.summary[f"summary/{k}"] = v
        if report is not None:
            import wandb

            self.run.summary["report"] = wandb.Image(str(report))
        offline = self.run.settings.mode == "offline"
        sync_dir = Path(self.run.dir).parent  # <run_dir>/wandb/offline-run-<id>
        self.run.finish(exit_code=exit_code)
        wait_for_exit_record(sync_dir / f"run-{self.run.id}.wandb")
        return sync_dir if offline else None


def have_wandb_credentials() -> bool:
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


def table_value(v: Any) -> Any:
    v = jsonl.plain(v)
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)
