"""Checkpoints: atomic save, keep-last-K, resume.

A checkpoint is a folder `step-NNNNNN/` holding the learners' DeepSpeed state (`learner/`) and
`trainer_state.json` (step, weight version, data position). It is written under a temporary
name and renamed only when every rank and the trainer state are on disk, so a crash never
leaves a half-written checkpoint that resume would pick up. On a multi-node cluster the run
folder must be on a filesystem all nodes share.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

PREFIX = "step-"
TMP_PREFIX = ".tmp-step-"


class Checkpoints:
    def __init__(self, root: Path, keep_last: int):
        self.root, self.keep_last = Path(root), keep_last

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir()
                      if p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file())

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(self, step: int, save_learners: Callable[[str], None], state: dict[str, Any]) -> Path:
        """`save_learners(folder)` must write the learner state into `folder` and return when
        every rank is done."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{PREFIX}{step:06d}"
        tmp = self.root / f"{TMP_PREFIX}{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_learners(str(tmp / "learner"))
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        if final.exists():  # a re-save of the same step (e.g. after resume): replace it
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in self.complete()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def read_state(folder: Path) -> dict[str, Any]:
        path = Path(folder) / "trainer_state.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} is not a complete checkpoint (no trainer_state.json)")
        return json.loads(path.read_text())
