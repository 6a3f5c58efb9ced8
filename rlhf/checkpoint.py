"""Checkpoints: when to save, durable atomic save, keep-last-K, resume, Hugging Face export.

A checkpoint is a folder `step-NNNNNN/` holding the learners' DeepSpeed state (`learner/`),
`trainer_state.json` (step, weight version, data position) and, when configured, `hf/`: the
policy as a standard Hugging Face folder (config, safetensors, tokenizer, generation config)
that transformers and vLLM load directly. It is written under a temporary name, every file and
folder in it is fsynced, and only then is it renamed into place (and the parent folder fsynced),
so a crash or power loss at any moment leaves either the complete new checkpoint or none: the
previous one stays usable. On a multi-node cluster the run folder must be on a filesystem all
nodes share.

`SavePolicy` decides when: every `save_every` steps and/or every `save_every_min` minutes of
wall time, so a crash loses at most a few minutes of work whatever the step time.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

PREFIX = "step-"
TMP_PREFIX = ".tmp-step-"
TRASH_PREFIX = ".old-step-"
HF_DIR = "hf"


class SavePolicy:
    """When Trainer.fit saves: `due(step, now)` after each finished step, `saved(now)` after a
    save. `now` is time.monotonic() seconds (injectable for tests)."""

    def __init__(self, every_steps: int, every_min: float, now: float | None = None):
        self.every_steps, self.every_s = every_steps, every_min * 60.0
        self.last = time.monotonic() if now is None else now

    def due(self, step: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        by_steps = bool(self.every_steps) and step % self.every_steps == 0
        by_time = bool(self.every_s) and now - self.last >= self.every_s
        return by_steps or by_time

    def saved(self, now: float | None = None) -> None:
        self.last = time.monotonic() if now is None else now


def export_due(mode: str, final: bool) -> bool:
    """Whether a checkpoint gets an hf/ export under trainer.export_hf=`mode`."""
    return mode == "every" or (mode == "final" and final)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every folder bottom-up, so their names are durable too."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoints:
    def __init__(self, root: Path, keep_last: int):
        self.root, self.keep_last = Path(root), keep_last

    def complete(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(
            p
            for p in self.root.iterdir()
            if p.name.startswith(PREFIX) and (p / "trainer_state.json").is_file()
        )

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(
        self,
        step: int,
        save_learners: Callable[[str], None],
        state: dict[str, Any],
        export_hf: Callable[[str], None] | None = None,
    ) -> Path:
        """`save_learners(folder)` must write the learner state into `folder` and return when
        every rank is done; `export_hf(folder)`, when given, writes the Hugging Face export."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"{PREFIX}{step:06d}"
        tmp = self.root / f"{TMP_PREFIX}{step:06d}"
        for stale in self.root.glob(".tmp-*"):  # left by a save that died: never complete
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        save_learners(str(tmp / "learner"))
        if export_hf is not None:
            export_hf(str(tmp / HF_DIR))
        (tmp / "trainer_state.json").write_text(json.dumps(state))
        fsync_tree(tmp)
        trash = None
        if final.exists():  # a re-save of the same step (e.g. after resume): swap, then delete
            trash = self.root / f"{TRASH_PREFIX}{step:06d}"
            shutil.rmtree(trash, ignore_errors=True)
            os.replace(final, trash)
        os.replace(tmp, final)
        fsync_dir(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        for old in self.complete()[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    @staticmethod
    def read_state(folder: Path) -> dict[str, Any]:
        path = Path(folder) / "trainer_state.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{folder} is not a complete checkpoint (no trainer_state.json)"
            )
        return json.loads(path.read_text())


# --------------------------------------------------------------------------------------------
# Hugging Face export (runs inside learner rank 0, or in scripts/export_hf.py)


def write_hf_folder(folder: str | Path, state_dict: dict, base_model_path: str, dtype: str) -> None:
    """Save `state_dict` (the HF causal LM's parameter names, full tensors) as a standard
    Hugging Face folder: the base model's config (dtype updated), safetensors weights, the
    base tokenizer and generation config. Tied weights are saved once."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = AutoConfig.from_pretrained(base_model_path)
    config.dtype = dtype
    tensors = {
        k: v.detach().to("cpu", getattr(torch, dtype)).contiguous() for k, v in state_dict.items()
    }
    if getattr(config, "tie_word_embeddings", False):
        tensors.pop("lm_head.weight", None)  # rebuilt from the embeddings on load
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_model_path).save_pretrained(folder)
    try:
        generation = GenerationConfig.from_pretrained(base_model_path)
    except OSError:  # the base folder has none: derive it from the model config
        generation = GenerationConfig.from_model_config(config)
    generation.save_pretrained(folder)
