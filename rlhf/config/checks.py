"""The error every config check raises, and the small checks the sections share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rlhf.errors import ConfigError

__all__ = [
    "DATA_SUFFIXES",
    "DTYPES",
    "ConfigError",
    "data_file",
    "hf_folder",
    "in_range",
    "one_of",
    "positive",
]

DTYPES = ("float32", "bfloat16", "float16")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


def one_of(key: str, value: Any, allowed) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {allowed}")


def positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def in_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(key, f"must be in [{lo}, {hi}], got {value!r}")


def hf_folder(key: str, path: str) -> None:
    """`path` is a Hugging Face model folder (it has a config.json)."""
    if not path or not (Path(path) / "config.json").is_file():
        raise ConfigError(key, f"{path!r} is not a Hugging Face model folder (no config.json)")


def data_file(key: str, path: str) -> None:
    """`path` is a prompt file rlhf.data reads, or a datasets.save_to_disk folder."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(key, f"{path!r} does not exist")
    if p.is_file() and p.suffix not in DATA_SUFFIXES:
        raise ConfigError(
            key,
            f"{p.name!r}: supported files are {list(DATA_SUFFIXES)} or a datasets."
            "save_to_disk folder",
        )
