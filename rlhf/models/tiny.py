"""A tiny Qwen2 causal LM with a character-level tokenizer, built offline and cached.

``build_tiny_model()`` makes a small ``Qwen2ForCausalLM``, gives it a short supervised warm-up on
a task's format (prompt -> answer + EOS, loss on the answer tokens only) so that RL starts from a
model that is partly right, as real RL starts from a pretrained model, and saves a normal
Hugging Face folder that transformers and vLLM both load. Nothing is downloaded.

The defaults were picked with ``scripts/learnability.py`` (see its docstring for the table): a
530k-parameter model (hidden 128, 2 layers, 2 heads of 64, MLP 512) warmed up on the 49-problem
``addition`` table until its expected temperature-1 accuracy reaches 0.15 (0.3-1 s on one core);
GRPO at lr 2e-4 then lifts the reward from ~0.2 to ~0.93 in 250 steps for every seed tried.

Tokenizer note: transformers 5 maps a ``qwen2`` config to ``Qwen2Tokenizer`` whatever
``tokenizer_config.json`` says; for our ASCII alphabets without spaces it gives exactly the same
ids and text as the char-level tokenizer (``check_saved_tokenizer`` verifies this at build time).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

from rlhf.tasks import Problem, Task, get_task

log = logging.getLogger(__name__)

# Bump whenever a change here changes the bytes that build_tiny_model() writes.
CODE_VERSION = "tiny-v3"  # v3: the tokenizer has a chat template

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
MAX_POSITIONS = 128

# The tiny model has no roles to tell apart, so a conversation renders as the contents of its
# user turns, each assistant turn followed by EOS; with the generation prompt, one user turn
# "3+4=" renders exactly as the plain prompt "3+4=", the format the warm-up taught. It lets chat
# datasets run end to end on the tiny model (system turns are dropped: their text would be
# outside the task's alphabet).
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)

# Defaults chosen by scripts/learnability.py.
DEFAULT_HIDDEN_SIZE = 128
DEFAULT_NUM_LAYERS = 2
DEFAULT_NUM_HEADS = 2  # head_dim 64
DEFAULT_INTERMEDIATE_SIZE = 512
DEFAULT_WARMUP_STEPS = 300  # a cap: the warm-up stops at DEFAULT_WARMUP_TARGET
DEFAULT_WARMUP_LR = 1e-3
DEFAULT_WARMUP_BATCH_SIZE = 32
DEFAULT_WARMUP_TARGET = 0.15


# --------------------------------------------------------------------------------------------
# tokenizer


def build_tokenizer(alphabet: str, model_max_length: int = MAX_POSITIONS):
    """A character-level ``PreTrainedTokenizerFast``: one token per character of ``alphabet``.

    Ids 0..3 are ``<pad> <bos> <eos> <unk>``; then the alphabet's characters in order. Nothing is
    added on encode (no BOS), and decode joins tokens without spaces, so
    ``decode(encode(s)) == s`` for any string over the alphabet.
    """
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))  # unique, order kept
    if not chars:
        raise ValueError("empty alphabet")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab[c] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every single character is its own piece (specials are matched before pre-tokenization).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# --------------------------------------------------------------------------------------------
# model


def default_cache_dir() -> Path:
    env = os.environ.get("RLHF_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/rlhf/tiny").expanduser()


def _make_config(tokenizer, hidden_size, num_layers, num_heads, head_dim, intermediate_size):
    from transformers import Qwen2Config

    if hidden_size != num_heads * head_dim:
        # vLLM's Qwen2 derives head_dim as hidden_size // num_heads and ignores config.head_dim.
        raise ValueError(
            f"hidden_size ({hidden_size}) must equal num_heads ({num_heads}) "
            f"x head_dim ({head_dim})"
        )
    if head_dim not in (32, 64, 128):
        log.warning("head_dim=%d: vLLM's CPU attention kernels accept only 32/64/128", head_dim)
    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=False,
        use_sliding_window=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        dtype="float32",
        architectures=["Qwen2ForCausalLM"],
    )


def supervised_batch(tokenizer, problems: list[Problem]) -> dict[str, torch.Tensor]:
    """Right-padded ``prompt + answer + <eos>`` with labels on the answer and EOS only."""
    rows, labels = [], []
    for p in problems:
        prompt_ids = tokenizer.encode(p.prompt, add_special_tokens=False)
        answer_ids = tokenizer.encode(p.answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        rows.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    width = max(map(len, rows))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
    label_t = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return {"input_ids": input_ids, "attention_mask": mask, "labels": label_t}


@torch.no_grad()
def expected_accuracy(model, tokenizer, problems: list[Problem], batch_size: int = 256) -> float:
    """Mean probability of sampling exactly ``answer + <eos>`` at temperature 1.

    This is the expected exact-match reward of temperature-1 sampling, computed without sampling.
    """
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(problems), batch_size):
        b = supervised_batch(tokenizer, problems[i : i + batch_size])
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
        tgt = b["labels"][:, 1:]
        m = tgt != -100
        tok_lp = logp.gather(-1, tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1) * m
        total += tok_lp.sum(-1).exp().sum().item()
    model.train(was_training)
    return total / max(len(problems), 1)


def _small_table(task: Task, limit: int = 1024) -> list[Problem] | None:
    """Every problem of ``task`` when there are at most ``limit`` of them, else None."""
    if task.enumerate_problems is None:
        return None
    probs = list(itertools.islice(task.enumerate_problems(), limit + 1))
    return probs if len(probs) <= limit else None


def _eval_problems(task: Task) -> list[Problem]:
    """The whole table for a small finite task, else a fixed sample of 512 problems."""
    return _small_table(task) or task.sample(random.Random(12345), 512)


def warmup(
    model,
    tokenizer,
    task: Task,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    target: float | None,
    seed: int,
    eval_every: int | None = None,
) -> tuple[int, float]:
    """Supervised warm-up; stops early once the expected sampled accuracy reaches ``target``.

    The accuracy is checked every ``eval_every`` steps (default: every step for a table of up to
    127 problems, less often for bigger evaluation sets, to keep its cost proportionate).
    Returns (steps taken, final expected accuracy).
    """
    rng = random.Random(seed)
    eval_set = _eval_problems(task)
    if eval_every is None:
        eval_every = max(1, len(eval_set) // 64)
    table = _small_table(task)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    acc = expected_accuracy(model, tokenizer, eval_set)
    taken = 0
    order: list[Problem] = []
    for step in range(steps):
        if target is not None and acc >= target:
            break
        if table is not None:  # epochs over the whole (small) table, reshuffled each time
            if len(order) < batch_size:
                fresh = list(table)
                rng.shuffle(fresh)
                order.extend(fresh)
            batch, order = order[:batch_size], order[batch_size:]
        else:
            batch = task.sample(rng, batch_size)
        out = model(**supervised_batch(tokenizer, batch))
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        taken = step + 1
        if taken % eval_every == 0 or taken == steps:
            acc = expected_accuracy(model, tokenizer, eval_set)
    model.eval()
    return taken, acc


def check_saved_tokenizer(folder: str | Path, task: Task) -> None:
    """Check that ``AutoTokenizer.from_pretrained(folder)`` tokenizes like ``build_tokenizer``.

    transformers 5 maps a ``qwen2`` config to ``Qwen2Tokenizer`` whatever ``tokenizer_config.json``
    says, and that class rebuilds a byte-level BPE from our vocabulary (ignoring our
    pre-tokenizer and decoder). With no merges and an ASCII alphabet without spaces it gives the
    same ids and the same text; this check makes sure of it for the task's alphabet (vLLM loads the
    tokenizer the same way).
    """
    from transformers import AutoTokenizer

    ours = build_tokenizer(task.alphabet)
    theirs = AutoTokenizer.from_pretrained(str(folder))
    samples = list(task.alphabet) + [task.alphabet]
    samples += [p.prompt + p.answer for p in task.sample(0, 32)]
    for s in samples:
        a = ours.encode(s, add_special_tokens=False)
        b = theirs.encode(s, add_special_tokens=False)
        if a != b or theirs.decode(b) != s or len(a) != len(s):
            raise RuntimeError(
                f"tokenizer loaded from {folder} ({type(theirs).__name__}) does not match the "
                f"char-level tokenizer on {s!r}: {a} vs {b} -> {theirs.decode(b)!r}"
            )
    if theirs.eos_token_id != ours.eos_token_id or theirs.pad_token_id != ours.pad_token_id:
        raise RuntimeError(f"special token ids differ in the tokenizer loaded from {folder}")
    p = task.sample(0, 1)[0]
    chat = [{"role": "user", "content": p.prompt}]
    rendered = theirs.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    if rendered != p.prompt:
        raise RuntimeError(
            f"the chat template loaded from {folder} renders {chat} as "
            f"{rendered!r}, not {p.prompt!r}"
        )


def task_fingerprint(task: Task) -> str:
    """A digest of what a task generates, so that editing a task invalidates cached models."""
    probe = task.sample(random.Random(0), 256)
    if task.enumerate_problems is not None:
        probe += list(itertools.islice(task.enumerate_problems(), 4096))
    blob = json.dumps([task.alphabet, task.max_answer_chars, [(p.prompt, p.answer) for p in probe]])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cache_key(params: dict, task: Task) -> str:
    blob = json.dumps(
        {"code_version": CODE_VERSION, "task_fingerprint": task_fingerprint(task), **params},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_tiny_model(
    cache_dir: str | Path | None = None,
    *,
    task: str = "addition",
    hidden_size: int = DEFAULT_HIDDEN_SIZE,
    num_layers: int = DEFAULT_NUM_LAYERS,
    num_heads: int = DEFAULT_NUM_HEADS,
    head_dim: int = 64,
    intermediate_size: int = DEFAULT_INTERMEDIATE_SIZE,
    warmup_steps: int = DEFAULT_WARMUP_STEPS,
    warmup_lr: float = DEFAULT_WARMUP_LR,
    warmup_batch_size: int = DEFAULT_WARMUP_BATCH_SIZE,
    warmup_target: float | None = DEFAULT_WARMUP_TARGET,
    seed: int = 0,
) -> Path:
    """Build (or fetch from the cache) a warmed-up tiny model for ``task``; return its folder.

    The folder name is a hash of every argument, ``CODE_VERSION`` and a fingerprint of the task's
    problems (so editing a task invalidates its cached models). The model is written to a
    temporary folder next to it and renamed into place, so a crash never leaves a partial model.
    ``warmup_target`` stops the warm-up early once the expected temperature-1 exact-match accuracy
    reaches it (``None``: always run ``warmup_steps``), which keeps the starting reward of RL
    in the same range for every seed.
    """
    params = dict(
        task=task,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        warmup_steps=warmup_steps,
        warmup_lr=warmup_lr,
        warmup_batch_size=warmup_batch_size,
        warmup_target=warmup_target,
        seed=seed,
    )
    task_obj = get_task(task)
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / f"{task}-{_cache_key(params, task_obj)}"
    if (final / "config.json").is_file():
        return final

    from transformers import GenerationConfig, Qwen2ForCausalLM

    t0 = time.perf_counter()
    tokenizer = build_tokenizer(task_obj.alphabet)
    config = _make_config(
        tokenizer, hidden_size, num_layers, num_heads, head_dim, intermediate_size
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    n_params = sum(p.numel() for p in model.parameters())

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        taken, acc = warmup(
            model,
            tokenizer,
            task_obj,
            steps=warmup_steps,
            lr=warmup_lr,
            batch_size=warmup_batch_size,
            target=warmup_target,
            seed=seed,
        )
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        check_saved_tokenizer(tmp, task_obj)
        (tmp / "rlhf_tiny.json").write_text(
            json.dumps(
                {
                    "code_version": CODE_VERSION,
                    **params,
                    "num_params": n_params,
                    "warmup_steps_taken": taken,
                    "warmup_expected_accuracy": acc,
                },
                indent=2,
            )
        )
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process finished the same build first: keep theirs.
            if not (final / "config.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "built tiny model %s: %d params, warm-up %d steps, expected accuracy %.3f, %.1fs",
        final.name,
        n_params,
        taken,
        acc,
        time.perf_counter() - t0,
    )
    return final


def expected_accuracy_of_folder(path: str | Path, task: str | None = None) -> float:
    """Expected temperature-1 exact-match accuracy of a saved tiny model (for checks)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    meta = json.loads((path / "rlhf_tiny.json").read_text())
    task_obj = get_task(task or meta["task"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    return expected_accuracy(model, tok, _eval_problems(task_obj))


__all__ = [
    "CODE_VERSION",
    "build_tokenizer",
    "build_tiny_model",
    "default_cache_dir",
    "expected_accuracy",
]
