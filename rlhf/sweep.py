"""The Hydra sweep summary: one row per job of a multirun, as CSV and markdown."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from rlhf.progress import console
from rlhf.progress import fmt as _fmt
from rlhf.report import primary_metric_of, read_metrics, summarize


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
            out.append(
                {
                    "job": job.name,
                    "overrides": [str(o) for o in overrides or []],
                    "steps": s["steps"],
                    "final": s["final"],
                    "last_fifth": s["last_fifth"],
                }
            )
        return out

    @classmethod
    def markdown(cls, rows: list[dict]) -> str:
        # Overrides every job shares (+experiment=..., budgets) say nothing about the difference.
        shared = set.intersection(*(set(r["overrides"]) for r in rows)) if len(rows) > 1 else set()
        lines = (
            [f"shared overrides: `{' '.join(o for o in rows[0]['overrides'] if o in shared)}`", ""]
            if shared
            else []
        )
        lines += ["| " + " | ".join(cls.COLUMNS) + " |", "|" + "---|" * len(cls.COLUMNS)]
        for r in rows:
            cells = {
                **r,
                "overrides": " ".join(o for o in r["overrides"] if o not in shared),
                "final": _fmt(r["final"]),
                "last_fifth": _fmt(r["last_fifth"]),
            }
            lines.append(
                "| " + " | ".join(str(cells[c]).replace("|", "\\|") for c in cls.COLUMNS) + " |"
            )
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Reading an offline W&B run (tests, and checking what a run would upload)
# --------------------------------------------------------------------------------------------

# The .wandb file is a LevelDB-style log: a 7-byte file header (':W&B', magic 0xBEE1, version 0),
