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
``tokenizer_config.json`` says, and that class byte-encodes text (GPT-2's byte-to-unicode map:
space is ``Ġ``, newline ``Ċ``) before looking tokens up. So the vocabulary holds each character
under its byte-level name, and the char-level tokenizer byte-encodes the same way: both give the
same ids and text for any ASCII alphabet, spaces and newlines included (``check_saved_tokenizer``
verifies this at build time). Characters other than space and the control characters are their
own byte-level names, so the ids and vocabulary of alphabets without them are unchanged.
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
CODE_VERSION = "tiny-v4"  # v4: byte-level vocabulary names (spaces survive the reload)

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

# Agent tasks (Task.env set) use this template instead: the same, plus a "tool" message
# rendered as "[content]", so that a transcript reads "47+85=add(47,85)<eos>[132]132<eos>".
# Feedback from a simulated user ("higher") is a user message, rendered as is. Characters outside
# the task's alphabet are dropped by the tokenizer that vLLM and transformers load from the
# folder (Qwen2Tokenizer), so an environment's messages for the tiny model keep to it.
AGENT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}{{ m['content'] }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] }}{{ eos_token }}"
    "{% elif m['role'] == 'tool' %}[{{ m['content'] }}]{% endif %}"
    "{% endfor %}"
)
# Bump when the agent format or warm-up changes the bytes built for an agent task (part of the
# agent tasks' cache key only, so the single-turn tasks' cached models stay valid).
AGENT_FORMAT_VERSION = "agent-v2"  # v2: success checked every step once non-zero

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


def byte_level_name(char: str) -> str:
    """The name GPT-2's byte-level pre-tokenizer (which ``Qwen2Tokenizer`` uses) gives a
    single-byte character: itself for printable ASCII, ``chr(256 + n)`` for the n-th of the
    other bytes in order (space -> ``Ġ``, newline -> ``Ċ``). ValueError for a character that is
    not one byte in UTF-8 (it would need merges, which a char-level vocabulary has none of)."""
    code = ord(char)
    if code > 127:
        raise ValueError(
            f"{char!r}: the tiny tokenizer holds ASCII characters only (Qwen2Tokenizer splits "
            "any other character into several bytes)"
        )
    if 33 <= code <= 126:
        return char
    return chr(256 + (code if code < 33 else code - 94))  # 0..32 -> 256..288, 127 -> 289


def build_tokenizer(
    alphabet: str, model_max_length: int = MAX_POSITIONS, chat_template: str = CHAT_TEMPLATE
):
    """A character-level ``PreTrainedTokenizerFast``: one token per character of ``alphabet``.

    Ids 0..3 are ``<pad> <bos> <eos> <unk>``; then the alphabet's characters in order, each under
    its byte-level name (``byte_level_name``), so that the ``Qwen2Tokenizer`` transformers and
    vLLM rebuild from the saved folder gives the same ids. Nothing is added on encode (no BOS),
    and decode joins tokens without spaces, so ``decode(encode(s)) == s`` for any string over
    the alphabet. The alphabet must be ASCII.
    """
    from transformers import PreTrainedTokenizerFast

    chars = list(dict.fromkeys(alphabet))  # unique, order kept
    if not chars:
        raise ValueError("empty alphabet")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in chars:
        vocab[byte_level_name(c)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every single character is its own piece (specials are matched before pre-tokenization),
    # then byte-level named as Qwen2Tokenizer names it (a non-ASCII character stays one piece,
    # hence one <unk>).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
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
    fast.chat_template = chat_template
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


# --------------------------------------------------------------------------------------------
# agent tasks: demonstrations of a scripted expert, and sampled episodes (in process, no vLLM)

AGENT_MAX_TURNS = 4  # what the warm-up's success check allows, as env.max_turns does in a run
AGENT_MAX_TOKENS_PER_TURN = 16
AGENT_EVAL_EPISODES = 128
AGENT_EVAL_EVERY = 5


def _env_tools(env) -> list[dict]:
    from rlhf.envs import tool_schema

    return [tool_schema(fn) for fn in env.tools]


def demonstration_ids(renderer, messages: list[dict], tools: list[dict]) -> tuple[list, list]:
    """(ids, labels) of a finished transcript laid out as the agent loop lays out an episode:
    prompt ids, each assistant turn's text + end-of-turn token (labelled), the environment's
    messages as deltas (label -100). Messages after the last assistant turn are left out."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids = renderer.prompt_ids(messages[:first], tools)
    labels = [-100] * len(ids)
    pending: list[dict] = []
    for m in messages[first:]:
        if m["role"] != "assistant":
            pending.append(m)
            continue
        if pending:
            delta = renderer.delta_ids(pending)
            ids, labels, pending = ids + delta, labels + [-100] * len(delta), []
        turn = renderer.tokenizer.encode(m["content"], add_special_tokens=False)
        turn += renderer.turn_end_ids
        ids, labels = ids + turn, labels + turn
    return ids, labels


def demonstrations(task: Task, rows: list[Problem], seed: int) -> list[list[dict]]:
    """Transcripts of the task environment's scripted expert on ``rows``."""
    from rlhf import envs

    expert = envs.EXPERTS[task.env]
    out = []
    for i, p in enumerate(rows):
        env = envs.make(task.env)
        ep = envs.run_episode(env, expert, {"prompt": p.prompt, "answer": p.answer}, seed + i)
        env.close()
        if not ep.success:
            raise RuntimeError(f"the {task.env} expert failed on {p}: {ep.messages}")
        out.append(ep.messages)
    return out


@torch.no_grad()
def _sample_turn(model, contexts: list[list[int]], max_new: int, stop_ids, pad_id, gen):
    """One model turn for each context (temperature 1, KV cache, left-padded): the sampled ids,
    up to and including the first stop token."""
    width = max(map(len, contexts))
    ids = torch.tensor([[pad_id] * (width - len(c)) + c for c in contexts])
    mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in contexts])
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, logits, next_pos = out.past_key_values, out.logits[:, -1], pos[:, -1:] + 1
    stops = torch.tensor(list(stop_ids))
    done = torch.zeros(len(contexts), dtype=torch.bool)
    turns: list[list[int]] = [[] for _ in contexts]
    for _ in range(max_new):
        nxt = torch.multinomial(torch.softmax(logits.float(), -1), 1, generator=gen).squeeze(-1)
        for i in (~done).nonzero().flatten().tolist():
            turns[i].append(int(nxt[i]))
        done |= torch.isin(nxt, stops)
        if bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones(len(contexts), 1, dtype=mask.dtype)], dim=-1)
        out = model(
            input_ids=nxt[:, None],
            attention_mask=mask,
            position_ids=next_pos,
            past_key_values=past,
            use_cache=True,
        )
        past, logits, next_pos = out.past_key_values, out.logits[:, -1], next_pos + 1
    return turns


@torch.no_grad()
def sample_episodes(
    model,
    renderer,
    env_id: str,
    rows: list[dict],
    seeds: list[int],
    gen: torch.Generator,
    *,
    max_turns: int = AGENT_MAX_TURNS,
    max_tokens_per_turn: int = AGENT_MAX_TOKENS_PER_TURN,
    max_positions: int = MAX_POSITIONS,
) -> list[dict]:
    """Play one episode per (row, seed) with ``model`` sampling at temperature 1, turn by turn
    in a batch, laid out as the agent loop lays it out. Each result: ``ids``, ``mask`` (1 on
    sampled tokens), ``prompt_len``, ``reward`` (sum of turn rewards), ``success``, ``turns``,
    ``truncated``, ``tool_calls``, ``tool_errors``. An in-process stand-in for the vLLM loop,
    used by the warm-up's stopping check and scripts/learnability_agents.py."""
    from rlhf import envs

    stop_ids = set(renderer.stop_token_ids)
    eps = []
    for row, seed in zip(rows, seeds):
        env = envs.make(env_id)
        first, _ = env.reset(row, seed)
        ids = renderer.prompt_ids(first, _env_tools(env))
        eps.append(
            dict(
                env=env,
                ids=ids,
                mask=[0] * len(ids),
                prompt_len=len(ids),
                reward=0.0,
                success=False,
                turns=0,
                truncated=False,
                tool_calls=0,
                tool_errors=0,
                done=False,
            )
        )
    pad = renderer.tokenizer.pad_token_id or 0
    for _ in range(max_turns):
        live = [e for e in eps if not e["done"]]
        for e in live:
            if len(e["ids"]) + max_tokens_per_turn > max_positions:
                e["done"] = e["truncated"] = True
        live = [e for e in live if not e["done"]]
        if not live:
            break
        turns = _sample_turn(
            model, [e["ids"] for e in live], max_tokens_per_turn, stop_ids, pad, gen
        )
        for e, turn in zip(live, turns):
            e["ids"], e["mask"] = e["ids"] + turn, e["mask"] + [1] * len(turn)
            if not turn or turn[-1] not in stop_ids:  # cut by the token limit
                e["ids"] += renderer.turn_end_ids
                e["mask"] += [0] * len(renderer.turn_end_ids)
            new, reward, terminated, truncated, info = e["env"].step(renderer.action_text(turn))
            e["turns"] += 1
            e["reward"] += float(reward)
            e["tool_calls"] += int(info.get("tool_calls", 0))
            e["tool_errors"] += int(info.get("tool_errors", 0))
            e["success"] = bool(info.get("success", e["success"]))
            if terminated or truncated:
                e["done"], e["truncated"] = True, bool(truncated)
            else:
                delta = renderer.delta_ids(new)
                e["ids"], e["mask"] = e["ids"] + delta, e["mask"] + [0] * len(delta)
    for e in eps:
        if not e["done"]:
            e["truncated"] = True
        e.pop("env").close()
        e.pop("done")
    return eps


def agent_eval_rows(task: Task, n: int = AGENT_EVAL_EPISODES) -> list[dict]:
    """A fixed set of ``n`` episodes' prompt rows: the whole table repeated for a small finite
    task, else a fixed sample."""
    table = _small_table(task)
    probs = [table[i % len(table)] for i in range(n)] if table else task.sample(12345, n)
    return [{"prompt": p.prompt, "answer": p.answer} for p in probs]


def sampled_success(model, renderer, task: Task, seed: int, n: int = AGENT_EVAL_EPISODES) -> float:
    """The share of ``n`` sampled episodes (fixed rows and episode seeds, generator seeded by
    ``seed``) that succeed."""
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    eps = sample_episodes(model, renderer, task.env, agent_eval_rows(task, n), list(range(n)), gen)
    model.train(was_training)
    return sum(e["success"] for e in eps) / max(len(eps), 1)


def agent_warmup(
    model,
    tokenizer,
    task: Task,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    target: float | None,
    seed: int,
    eval_every: int = AGENT_EVAL_EVERY,
) -> tuple[int, float]:
    """Supervised warm-up of an agent task on its expert's demonstrations (loss on the model's
    turns only), stopped once the sampled episode success rate reaches ``target`` (checked
    every ``eval_every`` steps, and every step once it is above zero). Returns (steps taken,
    last measured success rate)."""
    from rlhf.envs.render import ChatRenderer

    renderer = ChatRenderer(tokenizer)
    from rlhf import envs

    tools = _env_tools(envs.make(task.env))
    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    success = sampled_success(model, renderer, task, seed)
    taken = 0
    for step in range(steps):
        if target is not None and success >= target:
            break
        rows = task.sample(rng, batch_size)
        demos = [demonstration_ids(renderer, m, tools) for m in demonstrations(task, rows, step)]
        width = max(len(ids) for ids, _ in demos)
        pad = tokenizer.pad_token_id
        batch = {
            "input_ids": torch.tensor([i + [pad] * (width - len(i)) for i, _ in demos]),
            "attention_mask": torch.tensor(
                [[1] * len(i) + [0] * (width - len(i)) for i, _ in demos]
            ),
            "labels": torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in demos]),
        }
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        taken = step + 1
        # Success climbs from its first episodes to past twice the target within a few steps,
        # so once any episode succeeds it is checked every step (the start must stay low).
        if taken % eval_every == 0 or taken == steps or success > 0:
            success = sampled_success(model, renderer, task, seed)
    model.eval()
    return taken, success


def check_saved_tokenizer(folder: str | Path, task: Task) -> None:
    """Check that ``AutoTokenizer.from_pretrained(folder)`` tokenizes like ``build_tokenizer``.

    transformers 5 maps a ``qwen2`` config to ``Qwen2Tokenizer`` whatever ``tokenizer_config.json``
    says, and that class rebuilds a byte-level BPE from our vocabulary (ignoring our
    pre-tokenizer and decoder). With no merges, an ASCII alphabet and the vocabulary's byte-level
    names it gives the same ids and the same text; this check makes sure of it for the task's
    alphabet (vLLM loads the tokenizer the same way).
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
    if task_obj.env:  # agent tasks only: the single-turn tasks' cache keys stay as they were
        params["agent_format"] = AGENT_FORMAT_VERSION
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    final = root / f"{task.replace(':', '-')}-{_cache_key(params, task_obj)}"
    if (final / "config.json").is_file():
        return final

    from transformers import GenerationConfig, Qwen2ForCausalLM

    t0 = time.perf_counter()
    tokenizer = build_tokenizer(
        task_obj.alphabet, chat_template=AGENT_CHAT_TEMPLATE if task_obj.env else CHAT_TEMPLATE
    )
    config = _make_config(
        tokenizer, hidden_size, num_layers, num_heads, head_dim, intermediate_size
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).float()
    n_params = sum(p.numel() for p in model.parameters())

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
    try:
        taken, acc = (agent_warmup if task_obj.env else warmup)(
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
                    # agent tasks: the sampled episode success rate (agent_warmup)
                    ("warmup_sampled_success" if task_obj.env else "warmup_expected_accuracy"): acc,
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


__all__ = [
    "CODE_VERSION",
    "build_tokenizer",
    "build_tiny_model",
    "default_cache_dir",
    "expected_accuracy",
]
