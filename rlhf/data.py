"""Prompt sources with a resumable position, and the reading and checking of prompt files.

`PromptSource.next(n)` returns n prompt dicts `{"prompt", "answer", "fields", "group_id"}` (plus
`"prompt_token_ids"` when a chat template rendered the prompt, so special tokens the template
adds, such as a BOS, reach the engine exactly once). `group_id` is a running counter that
continues across a resume. A file source walks a seeded shuffle of the rows, epoch after epoch;
the built-in task draws fresh problems from a seeded RNG. `state()` / `load_state()` make the
position part of a checkpoint.

Files are read with Hugging Face `datasets` into memory-mapped Arrow tables, so a million-row
file does not sit in the driver's memory: `.parquet` and `.arrow` files and `save_to_disk`
folders directly; `.jsonl` / `.json` through a line-by-line check first (that is where invalid
UTF-8, broken JSON and wrong types show up, and `datasets` would report them without a line
number). Every row is checked up front, before Ray starts: a bad row is an error naming the file
and line (`data.on_bad_row=error`) or is skipped and counted (`skip`, at most `max_bad_frac`).
Prompts longer than `data.max_prompt_tokens` are filtered and counted, or an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rlhf.config import ConfigError, DataConfig

log = logging.getLogger(__name__)

# Chunk of rows checked / tokenized at once: bounds memory on huge files.
_BATCH = 1024


# --------------------------------------------------------------------------------------------
# Row checks (pure: one row in, a normalised row or the reason it is bad out)


def lookup(row: dict[str, Any], dotted: str) -> Any:
    """`row["a"]["b"]` for `dotted="a.b"`; a top-level key containing dots wins. KeyError when
    absent."""
    if dotted in row:
        return row[dotted]
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(dotted)
        value = value[part]
    return value


def _check_messages(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "must be a non-empty list of {'role', 'content'} messages"
    for i, m in enumerate(messages):
        if (
            not isinstance(m, dict)
            or not isinstance(m.get("role"), str)
            or not isinstance(m.get("content"), str)
        ):
            return f"message {i} is not {{'role': str, 'content': str}} (got {str(m)[:80]})"
    return None


def normalise_row(row: Any, cfg: DataConfig) -> tuple[dict[str, Any] | None, str | None]:
    """(row, None) with `text` (plain prompt or ""), `messages` (JSON or ""), `answer` (str),
    `fields` (JSON of the other columns); or (None, reason) for a bad row."""
    if not isinstance(row, dict):
        return None, f"expected a JSON object, got {type(row).__name__}"
    prompt = row.get(cfg.prompt_key)
    if prompt is None:
        return None, f"no field {cfg.prompt_key!r} (data.prompt_key; keys: {sorted(row)})"
    if isinstance(prompt, str):
        text, messages = prompt, ""
        if not text:
            return None, f"field {cfg.prompt_key!r} is an empty string"
    else:
        problem = _check_messages(prompt)
        if problem:
            return (
                None,
                f"field {cfg.prompt_key!r} is neither a string nor chat messages: {problem}",
            )
        text, messages = "", json.dumps(prompt, ensure_ascii=False)
    try:
        answer = lookup(row, cfg.answer_key)
    except KeyError:
        return None, f"no field {cfg.answer_key!r} (data.answer_key; keys: {sorted(row)})"
    if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
        return None, (
            f"field {cfg.answer_key!r} must be a string or a number, got {type(answer).__name__}"
        )
    top = cfg.answer_key.split(".")[0] if cfg.answer_key not in row else cfg.answer_key
    fields = {k: v for k, v in row.items() if k not in (cfg.prompt_key, top)}
    return {
        "text": text,
        "messages": messages,
        "answer": str(answer),
        "fields": json.dumps(fields, ensure_ascii=False, default=str),
    }, None


# --------------------------------------------------------------------------------------------
# Reading files


class _BadRows:
    """Counts bad rows; raises at the first one (on_bad_row=error) naming file and line."""

    def __init__(self, cfg: DataConfig, path: Path, key: str):
        self.cfg, self.path, self.key = cfg, path, key
        self.count, self.examples = 0, []

    def add(self, where: str, reason: str) -> None:
        if self.cfg.on_bad_row == "error":
            raise ConfigError(
                self.key, f"{self.path}:{where}: {reason} (data.on_bad_row=skip skips such rows)"
            )
        self.count += 1
        if len(self.examples) < 3:
            self.examples.append(f"{where}: {reason}")

    def check_share(self, total: int) -> None:
        if total and self.count / total > self.cfg.max_bad_frac:
            raise ConfigError(
                "data.max_bad_frac",
                f"{self.path}: {self.count} of {total} rows are bad "
                f"({self.count / total:.1%} > data.max_bad_frac="
                f"{self.cfg.max_bad_frac}); first: {'; '.join(self.examples)}",
            )
        if self.count:
            log.warning(
                "%s: skipped %d bad rows of %d (data.on_bad_row=skip); first: %s",
                self.path,
                self.count,
                total,
                "; ".join(self.examples),
            )


# Each reader yields (where, parsed row, None) or (where, None, why it cannot be parsed).
Rows = Iterator[tuple[str, Any, str | None]]


def _json_lines(path: Path, key: str) -> Rows:
    """Every non-empty line of a .jsonl file, read as bytes so invalid UTF-8 names its line."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, 1):
            where = f"line {line_no}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield (
                    where,
                    None,
                    f"not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 4]!r})",
                )
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line), None
            except json.JSONDecodeError as e:
                yield where, None, f"not valid JSON ({e.msg} at column {e.colno})"


def _json_list(path: Path, key: str) -> Rows:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(
            key,
            f"{path}:line {line}: not valid UTF-8 (a .json file is one "
            f"document, so no row can be skipped)",
        ) from None
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(key, f"{path}:line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(rows, list):
        raise ConfigError(key, f"{path}: expected a JSON list of objects (or use .jsonl)")
    for i, row in enumerate(rows, 1):
        yield f"row {i}", row, None


def _arrow_source(path: Path, key: str):
    """A memory-mapped `datasets.Dataset` of a parquet / arrow file or save_to_disk folder."""
    import datasets

    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                split = "train" if "train" in ds else sorted(ds)[0]
                ds = ds[split]
        elif path.suffix == ".arrow":
            ds = datasets.Dataset.from_file(str(path))
        else:
            ds = datasets.Dataset.from_parquet(str(path))
    except Exception as e:  # a corrupt file: name it
        raise ConfigError(key, f"cannot read {path}: {type(e).__name__}: {e}") from None
    return ds


def _arrow_rows(path: Path, key: str) -> Rows:
    ds = _arrow_source(path, key)
    for start in range(0, len(ds), _BATCH):
        chunk = ds[start : start + _BATCH]  # dict of columns
        cols = list(chunk)
        for i in range(len(chunk[cols[0]]) if cols else 0):
            yield f"row {start + i + 1}", {c: chunk[c][i] for c in cols}, None


def _file_fingerprint(path: Path, cfg: DataConfig) -> str:
    """Changes when the file or the keys change: the datasets cache of normalised rows is
    keyed by it, so an edited file is never served stale."""
    st = path.stat()
    parts = [
        str(path.resolve()),
        str(st.st_size),
        str(st.st_mtime_ns),
        cfg.prompt_key,
        cfg.answer_key,
        cfg.on_bad_row,
    ]
    if path.is_dir():
        parts += [
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in sorted(path.iterdir())
        ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _normalised_rows(path: str, cfg_json: str, fingerprint: str, key: str):
    """Generator for datasets.Dataset.from_generator (module-level so its hash is stable)."""
    del fingerprint  # only part of the cache key
    cfg = DataConfig(**json.loads(cfg_json))
    for where, raw, error in _rows_of(Path(path), key):
        row = normalise_row(raw, cfg)[0] if error is None else None
        if row is not None:  # bad rows were counted (or refused) by the check pass
            yield {**row, "where": where}


def _rows_of(path: Path, key: str) -> Rows:
    if path.suffix == ".jsonl":
        return _json_lines(path, key)
    if path.suffix == ".json":
        return _json_list(path, key)
    return _arrow_rows(path, key)


def load_prompts(cfg: DataConfig, path: str | None = None, key: str = "data.path"):
    """Check every row of `path` (default cfg.path) and return (a memory-mapped
    `datasets.Dataset` of normalised rows: `text`, `messages`, `answer`, `fields`, `where`;
    the number of bad rows skipped). Raises ConfigError naming the file and line of a bad row
    (or saying how many were skipped when they are more than data.max_bad_frac)."""
    p = Path(path or cfg.path)
    bad = _BadRows(cfg, p, key)
    total = 0
    for where, raw, error in _rows_of(p, key):  # the check pass: streaming, nothing kept
        total += 1
        reason = error or normalise_row(raw, cfg)[1]
        if reason is not None:
            bad.add(where, reason)
    if total - bad.count <= 0:
        raise ConfigError(
            key, f"{p} has no usable rows" + (f" ({bad.count} bad)" if bad.count else "")
        )
    bad.check_share(total)
    import datasets

    cfg_json = json.dumps({k: getattr(cfg, k) for k in ("prompt_key", "answer_key")})
    kwargs = dict(path=str(p), cfg_json=cfg_json, fingerprint=_file_fingerprint(p, cfg), key=key)
    progress = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one line per file in the log is enough
    try:
        ds = datasets.Dataset.from_generator(_normalised_rows, gen_kwargs=kwargs)
    except Exception as e:  # e.g. a column whose type changes between rows
        raise ConfigError(key, f"cannot convert {p} to Arrow: {type(e).__name__}: {e}") from None
    finally:
        if progress:
            datasets.enable_progress_bars()
    return ds, bad.count


# --------------------------------------------------------------------------------------------
# Rendering and lengths


class PromptRenderer:
    """Turns a normalised row into engine input: plain text as is, chat messages through the
    tokenizer's chat template with the generation prompt appended."""

    def __init__(self, tokenizer_path: str):
        self.tokenizer_path = tokenizer_path
        self._tok = None

    @property
    def tokenizer(self):
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(self.tokenizer_path)
        return self._tok

    def render(self, text: str, messages: str) -> tuple[str, list[int] | None]:
        """(prompt text, token ids or None). Token ids only for chat prompts."""
        if not messages:
            return text, None
        if not self.tokenizer_path:
            raise ConfigError(
                "data.prompt_key",
                "chat messages need a tokenizer with a chat template (model.path)",
            )
        conv = json.loads(messages)
        tok = self.tokenizer
        if not getattr(tok, "chat_template", None):
            raise ConfigError(
                "data.prompt_key",
                f"the tokenizer in {self.tokenizer_path} has no "
                f"chat template; use plain-string prompts",
            )
        rendered = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        ids = tok.apply_chat_template(
            conv, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return rendered, list(ids)

    def lengths(self, texts: list[str], messages: list[str]) -> list[int]:
        tok = self.tokenizer
        plain = [i for i, m in enumerate(messages) if not m]
        out = [0] * len(texts)
        if plain:
            # As vLLM tokenizes a text prompt: with the tokenizer's special tokens.
            enc = tok([texts[i] for i in plain])["input_ids"]
            for i, ids in zip(plain, enc):
                out[i] = len(ids)
        for i, m in enumerate(messages):
            if m:
                out[i] = len(self.render("", m)[1])
        return out


def keep_short(
    ds, cfg: DataConfig, renderer: PromptRenderer, key: str = "data.max_prompt_tokens"
) -> tuple[list[int], int]:
    """Indices of the rows whose prompt fits in data.max_prompt_tokens, and how many were
    dropped; with on_long_prompt=error the first long one is a ConfigError."""
    limit = cfg.max_prompt_tokens
    if not limit:
        return list(range(len(ds))), 0
    keep, dropped, first = [], 0, ""
    for start in range(0, len(ds), _BATCH):
        chunk = ds[start : start + _BATCH]
        for i, n in enumerate(renderer.lengths(chunk["text"], chunk["messages"])):
            if n <= limit:
                keep.append(start + i)
                continue
            if cfg.on_long_prompt == "error":
                raise ConfigError(
                    key,
                    f"{cfg.path}:{chunk['where'][i]}: the prompt has {n} tokens "
                    f"> data.max_prompt_tokens={limit} (data.on_long_prompt="
                    f"filter drops such prompts)",
                )
            dropped += 1
            first = first or f"{chunk['where'][i]} ({n} tokens)"
    if not keep:
        raise ConfigError(key, f"every prompt of {cfg.path} is longer than {limit} tokens")
    if dropped:
        log.warning(
            "%s: dropped %d of %d prompts longer than data.max_prompt_tokens=%d (first: %s)",
            cfg.path,
            dropped,
            len(ds),
            limit,
            first,
        )
    return keep, dropped


# --------------------------------------------------------------------------------------------
# The training stream


def _has_messages(ds) -> bool:
    return any(any(ds[start : start + _BATCH]["messages"]) for start in range(0, len(ds), _BATCH))


class PromptSource:
    """The training prompts. `tokenizer_path` (the model folder) renders chat messages and
    measures prompt lengths; it may be empty for the built-in task."""

    def __init__(self, cfg: DataConfig, seed: int, tokenizer_path: str = ""):
        self.cfg, self.seed = cfg, seed
        self.renderer = PromptRenderer(tokenizer_path)
        self.rows = None
        self.bad_rows = self.long_prompts = 0
        if cfg.path:
            self.rows, self.bad_rows = load_prompts(cfg)
            if tokenizer_path:
                self._index, self.long_prompts = keep_short(self.rows, cfg, self.renderer)
            elif _has_messages(self.rows):
                raise ConfigError(
                    "data.prompt_key",
                    f"{cfg.path} holds chat messages, which need "
                    f"a tokenizer (PromptSource(tokenizer_path=...))",
                )
            else:
                self._index = list(range(len(self.rows)))
        else:
            from rlhf.tasks import get_task

            self.task = get_task(cfg.task)
        self.epoch, self.position, self.drawn = 0, 0, 0
        self._order = self._shuffled(0)
        self._rng = random.Random(seed)

    def __len__(self) -> int:
        """Usable rows of a file (a built-in task is unbounded: 0)."""
        return len(self._index) if self.rows is not None else 0

    def usable_rows(self) -> list[int]:
        """Dataset indices of the rows that passed the checks and the length filter."""
        return list(self._index) if self.rows is not None else []

    def metrics(self) -> dict[str, float]:
        """What loading dropped, for the run's first log line."""
        return {
            "data/bad_rows": float(self.bad_rows),
            "data/long_prompts": float(self.long_prompts),
            "data/rows": float(len(self)),
        }

    def _shuffled(self, epoch: int) -> list[int]:
        if self.rows is None:
            return []
        order = list(self._index)
        if self.cfg.shuffle:
            random.Random(self.seed * 100003 + epoch).shuffle(order)
        return order

    def row(self, index: int) -> dict[str, Any]:
        """The prompt dict of dataset row `index` (no group id)."""
        r = self.rows[index]
        prompt, ids = self.renderer.render(r["text"], r["messages"])
        out = {"prompt": prompt, "answer": r["answer"], "fields": json.loads(r["fields"])}
        if ids is not None:
            out["prompt_token_ids"] = ids
        return out

    def next(self, n: int) -> list[dict[str, Any]]:
        """n prompts, each with a fresh group id."""
        out = []
        if self.rows is None:
            for problem in self.task.sample(self._rng, n):
                out.append(
                    {
                        "prompt": problem.prompt,
                        "answer": problem.answer,
                        "fields": dict(problem.fields),
                    }
                )
        else:
            for _ in range(n):
                if self.position == len(self._order):
                    self.epoch, self.position = self.epoch + 1, 0
                    self._order = self._shuffled(self.epoch)
                out.append(self.row(self._order[self.position]))
                self.position += 1
        for p in out:
            p["group_id"] = self.drawn
            self.drawn += 1
        return out

    def state(self) -> dict[str, Any]:
        rng = self._rng.getstate()
        return {
            "epoch": self.epoch,
            "position": self.position,
            "drawn": self.drawn,
            "rows": len(self),
            "rng": [rng[0], list(rng[1]), rng[2]],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        if self.rows is not None and state.get("rows", len(self)) != len(self):
            raise ConfigError(
                "data.path",
                f"the checkpoint was written with {state['rows']} usable "
                f"rows, {self.cfg.path} now has {len(self)}: resuming "
                f"would replay or skip prompts",
            )
        self.epoch, self.position, self.drawn = state["epoch"], state["position"], state["drawn"]
        self._order = self._shuffled(self.epoch)
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
