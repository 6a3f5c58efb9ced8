"""The run folder's JSON-lines files: one writer, one reader, one truncation on resume.

A run appends one JSON object per line to each of `RUN_FILES` (metrics, samples, the prompt
ledger, evaluations), every row with the trainer `step` it belongs to. A row is complete when
its newline is on disk: a writer killed mid-row leaves a torn last line, which the reader leaves
out and `truncate_after` removes, so the next row never glues onto it. A line that does not
parse anywhere else is damage, not a torn write, and is reported with its file and line number.

When a run starts (fresh or resumed) it truncates every one of its files to the step it starts
from: rows with `step` greater than that step were written by an attempt that got further than
its checkpoint, and this run writes them again. One convention for every file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LEDGER = "ledger.jsonl"
EVAL = "eval.jsonl"
RUN_FILES = (METRICS, SAMPLES, LEDGER, EVAL)


def plain(v: Any) -> Any:
    """Plain JSON: numpy / torch scalars become numbers, NaN and inf become null, tuples lists;
    nested dicts and lists are converted throughout."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, RuntimeError):  # not a scalar
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def dumps(row: dict[str, Any]) -> str:
    """One row as one line (newline included)."""
    return json.dumps(plain(row), allow_nan=False, default=str) + "\n"


def append(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    """Append `rows` to `path` in one write, flushed when this returns (a crashed run keeps
    every row it finished)."""
    text = "".join(dumps(r) for r in rows)
    if text:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)


def read(path: Path) -> list[dict[str, Any]]:
    """The complete rows of `path` ([] when it does not exist). A torn last line (no newline:
    the writer was killed mid-row) is left out; a bad line before it raises ValueError naming
    the file and the line."""
    return [row for row, _ in _rows(Path(path))]


def truncate_after(path: Path, step: int) -> None:
    """Keep the complete rows of `path` whose `step` is <= `step` (a torn last line goes too),
    byte for byte. The file is replaced atomically, and only when something changes."""
    path = Path(path)
    if not path.exists():
        return
    rows = _rows(path)
    kept = "".join(line + "\n" for row, line in rows if row["step"] <= step)
    if kept == path.read_text(encoding="utf-8"):
        return
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(kept, encoding="utf-8")
    os.replace(tmp, path)


def truncate_run(run_dir: Path, step: int) -> None:
    """`truncate_after(step)` for every file a run appends to in `run_dir`."""
    for name in RUN_FILES:
        truncate_after(Path(run_dir) / name, step)


def _rows(path: Path) -> list[tuple[dict[str, Any], str]]:
    """(row, its line) for every complete, non-blank line of `path`."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    lines.pop()  # what follows the last newline: "" or a torn row
    out = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append((json.loads(line), line))
        except ValueError as e:
            raise ValueError(f"{path}:{i}: not a JSON row ({e}): {line[:80]!r}") from None
    return out
