"""Reading a finished (or running) run back: metrics.jsonl rows, their summary, report.png.

No sink state here: these functions read the run folder, so the end-of-run summary, the sweep
table, scripts/plot_run.py and notebooks all see the same numbers. matplotlib is imported only
inside `plot_run`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlhf import jsonl
from rlhf.progress import fmt as _fmt

# The metric the end summary, the report and the sweep table rank by, in order of preference.
PRIMARY_METRICS = ("reward/mean", "env/episode_return_mean")


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of run_dir/metrics.jsonl (null read as NaN); a torn last line is skipped."""
    rows = jsonl.read(Path(run_dir) / jsonl.METRICS)
    return [{k: math.nan if v is None else v for k, v in row.items()} for row in rows]


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
    vals = [
        float(r[metric])
        for r in rows
        if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])
    ]
    out = {
        "first_fifth": math.nan,
        "last_fifth": math.nan,
        "rise": math.nan,
        "final": math.nan,
        "steps": len(rows),
    }
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
                name = k[len("timing/") : -2]
                sums[name] = sums.get(name, 0.0) + v
    return {k: v / total for k, v in sums.items()}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def plot_run(run_dir: Path) -> Path:
    """run_dir/report.png from run_dir/metrics.jsonl: a 3x2 figure with the primary metric (raw
    and smoothed), the KL, the response / episode length, the stacked time per phase, the
    held-out evaluation (eval.jsonl, step 0 included; agent runs without one: turns per
    episode, success rate, truncated share) and the learner's and engines' idle shares (the
    rollout pipeline's overlap)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    primary = primary_metric_of(rows)
    length = (
        "rollout/response_len_mean"
        if any("rollout/response_len_mean" in r for r in rows)
        else "env/episode_len_mean"
    )
    steps = [r.get("step", i) for i, r in enumerate(rows)]

    fig = Figure(figsize=(12, 11), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    (ax_p, ax_kl), (ax_len, ax_t), (ax_eval, ax_idle) = fig.subplots(3, 2)
    s = summarize(rows, primary)
    fig.suptitle(
        f"{run_dir.name}: {primary} {_fmt(s['first_fifth'])} -> {_fmt(s['last_fifth'])} "
        f"(first -> last fifth of {s['steps']} steps)"
    )

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
    phases = sorted(
        {
            k
            for r in rows
            for k in r
            if k.startswith("timing/") and k.endswith("_s") and k != "timing/step_s"
        }
    )
    if phases:
        ys = [[r.get(p, 0.0) if _finite(r.get(p)) else 0.0 for r in rows] for p in phases]
        labels = [p[len("timing/") : -2] for p in phases]
        # Step time no phase accounts for (logging, checkpoints) is shown, not hidden.
        other = [
            max(0.0, r["timing/step_s"] - sum(col)) if _finite(r.get("timing/step_s")) else 0.0
            for r, col in zip(rows, zip(*ys))
        ]
        if any(v > 1e-3 for v in other):
            ys.append(other)
            labels.append("other")
        ax_t.stackplot(steps, ys, labels=labels, alpha=0.85)
        handles, names = ax_t.get_legend_handles_labels()
        ax_t.legend(handles[::-1], names[::-1], loc="upper right", fontsize=8)  # as stacked
        ax_t.grid(alpha=0.3)
    else:
        _no_data(ax_t, "timing/*_s")

    evals = jsonl.read(run_dir / jsonl.EVAL)
    agent = ["env/turns_mean", "env/success_rate", "env/truncated_frac"]
    if not evals and any("env/turns_mean" in r for r in rows):
        # Agent runs (no held-out eval): turns per episode next to the success rate.
        _lines(ax_eval, rows, steps, agent, "agent episodes: turns, success, truncated")
    else:
        _lines(
            ax_eval,
            evals,
            [r.get("step", i) for i, r in enumerate(evals)],
            sorted(
                {
                    k
                    for r in evals
                    for k in r
                    if k.startswith("eval/") and (k.endswith("accuracy") or "pass@" in k)
                }
            ),
            "held-out evaluation (eval.jsonl)",
        )
    _lines(
        ax_idle,
        rows,
        steps,
        ["perf/learner_idle_frac", "perf/rollout_idle_frac"],
        "idle share of the step (rollout pipeline overlap)",
    )

    out = run_dir / "report.png"
    fig.savefig(out)
    return out


def _lines(ax, rows: list[dict], steps: list, keys: list[str], title: str) -> None:
    """One line per key (sparse keys are fine: only the steps that report them)."""
    ax.set_title(title)
    ax.set_xlabel("trainer step")
    drawn = False
    for key in keys:
        xs, ys = _series(rows, steps, key)
        if xs:
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, lw=1.2, label=key)
            drawn = True
    if not drawn:
        _no_data(ax, ", ".join(keys) or "eval/*")
        return
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


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
    ax.text(
        0.5,
        0.5,
        f"no data\n({key} not logged)",
        ha="center",
        va="center",
        transform=ax.transAxes,
        color="gray",
    )
    ax.set_xticks([])
    ax.set_yticks([])
