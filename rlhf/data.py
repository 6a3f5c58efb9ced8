"""Prompt sources with a resumable position.

`PromptSource.next(n)` returns n prompt dicts `{"prompt", "answer", "fields"}`. A file source
(jsonl / json / parquet / `datasets.save_to_disk` folder) walks a seeded shuffle of the rows,
epoch after epoch; the built-in task draws fresh problems from a seeded RNG. `state()` and
`load_state()` make the position part of a checkpoint. Files are read and checked up front,
before Ray starts: a bad row is an error naming the file and row, never a silent skip.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, DataConfig


def load_rows(cfg: DataConfig) -> list[dict[str, Any]]:
    path = Path(cfg.path)
    if path.is_dir():
        from datasets import load_from_disk  # optional dependency, only for this format

        rows = [dict(r) for r in load_from_disk(str(path))]
    elif path.suffix == ".jsonl":
        rows = []
        with path.open() as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ConfigError("data.path", f"{path}:{line_no}: not valid JSON ({e.msg})") from e
    elif path.suffix == ".json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ConfigError("data.path", f"{path}: expected a JSON list of objects")
    else:  # .parquet (validate() allowed nothing else)
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    if not rows:
        raise ConfigError("data.path", f"{path} has no rows")
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not isinstance(row.get(cfg.prompt_key), str):
            raise ConfigError("data.prompt_key", f"{path} row {i} has no string field "
                                                 f"{cfg.prompt_key!r} (keys: {sorted(row) if isinstance(row, dict) else type(row).__name__})")
    return rows


class PromptSource:
    def __init__(self, cfg: DataConfig, seed: int):
        self.cfg, self.seed = cfg, seed
        self.rows = load_rows(cfg) if cfg.path else None
        if self.rows is None:
            from rlhf.tasks import get_task

            self.task = get_task(cfg.task)
        self.epoch, self.position, self.drawn = 0, 0, 0
        self._order = self._shuffled(0)
        self._rng = random.Random(seed)

    def _shuffled(self, epoch: int) -> list[int]:
        if self.rows is None:
            return []
        order = list(range(len(self.rows)))
        if self.cfg.shuffle:
            random.Random(self.seed * 100003 + epoch).shuffle(order)
        return order

    def next(self, n: int) -> list[dict[str, Any]]:
        """n prompts, each with a fresh group id."""
        out = []
        if self.rows is None:
            for problem in self.task.sample(self._rng, n):
                out.append({"prompt": problem.prompt, "answer": problem.answer, "fields": {}})
        else:
            for _ in range(n):
                if self.position == len(self._order):
                    self.epoch, self.position = self.epoch + 1, 0
                    self._order = self._shuffled(self.epoch)
                row = self.rows[self._order[self.position]]
                self.position += 1
                fields = {k: v for k, v in row.items()
                          if k not in (self.cfg.prompt_key, self.cfg.answer_key)}
                out.append({"prompt": row[self.cfg.prompt_key],
                            "answer": str(row.get(self.cfg.answer_key, "")), "fields": fields})
        for p in out:
            p["group_id"] = self.drawn
            self.drawn += 1
        return out

    def state(self) -> dict[str, Any]:
        rng = self._rng.getstate()
        return {"epoch": self.epoch, "position": self.position, "drawn": self.drawn,
                "rng": [rng[0], list(rng[1]), rng[2]]}

    def load_state(self, state: dict[str, Any]) -> None:
        self.epoch, self.position, self.drawn = state["epoch"], state["position"], state["drawn"]
        self._order = self._shuffled(self.epoch)
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
