"""ChatRenderer: token deltas after the model's sampled ids, for the tiny model's format and for
a real chat template (Qwen2.5's, on a byte-level BPE tokenizer trained here offline with
Qwen2's pre-tokenizer: nothing is downloaded)."""

import functools
import json
from pathlib import Path

import pytest

from rlhf.envs.render import ChatRenderer
from rlhf.envs.tools import tool_schema
from rlhf.models.tiny import AGENT_CHAT_TEMPLATE, build_tokenizer
from rlhf.tasks import get_task

# Qwen2.5-Instruct's chat template (tools in the system prompt, tool results as user turns).
QWEN2_TEMPLATE = (Path(__file__).parent / "qwen2_chat_template.jinja").read_text()

# Qwen2's pre-tokenizer split (tokenizer.json of the Qwen2 family).
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def _call(a, b):
    args = json.dumps({"name": "add", "arguments": {"a": a, "b": b}})
    return f"<tool_call>\n{args}\n</tool_call>"


CONVERSATIONS = [
    [  # a tool call, its result, the answer, then a follow-up from the user
        {"role": "system", "content": "You add numbers."},
        {"role": "user", "content": "What is 47+85?"},
        {"role": "assistant", "content": _call(47, 85)},
        {"role": "tool", "name": "add", "content": "132"},
        {"role": "assistant", "content": "It is 132."},
        {"role": "user", "content": "And 1+2?"},
        {"role": "assistant", "content": "Let me check.\n" + _call(1, 2)},
        {"role": "tool", "name": "add", "content": "3"},
        {"role": "tool", "name": "add", "content": "error: add: b: missing"},
        {"role": "assistant", "content": "3"},
    ],
    [  # no system message (the template writes its default one), feedback as user turns
        {"role": "user", "content": "Guess my number, 0 to 9."},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "higher"},
        {"role": "assistant", "content": " 7\n\n"},
        {"role": "user", "content": "lower\n"},
        {"role": "assistant", "content": "6"},
    ],
]


@functools.cache
def qwen_like_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = QWEN2_TEMPLATE
    corpus = [
        fast.apply_chat_template(c, tools=[tool_schema(add)], tokenize=False) for c in CONVERSATIONS
    ]
    tok.train_from_iterator(corpus * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.add_tokens(["<tool_call>", "</tool_call>"])  # added, not special, as in Qwen2.5
    fast.chat_template = QWEN2_TEMPLATE
    return fast


def _episode_ids(renderer, conv, tools):
    """The ids the agent loop builds: prompt, then per model turn its sampled ids (here the
    tokenization of the turn's text + the end-of-turn token), then the environment's delta."""
    tok = renderer.tokenizer
    first = next(i for i, m in enumerate(conv) if m["role"] == "assistant")
    ids = renderer.prompt_ids(conv[:first], tools)
    pending = []
    for m in conv[first:]:
        if m["role"] != "assistant":
            pending.append(m)
            continue
        if pending:
            ids += renderer.delta_ids(pending)
            pending = []
        sampled = tok.encode(m["content"], add_special_tokens=False) + renderer.stop_token_ids[:1]
        assert renderer.action_text(sampled) == m["content"]
        ids += sampled
    return ids, pending


@pytest.mark.parametrize("conv", CONVERSATIONS)
@pytest.mark.parametrize("with_tools", [True, False])
def test_qwen_template_deltas_equal_full_renders(conv, with_tools):
    tok = qwen_like_tokenizer()
    renderer = ChatRenderer(tok)
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert renderer.stop_token_ids == [im_end] and renderer.turn_end_ids == [im_end]
    tools = [tool_schema(add)] if with_tools else []
    # After every model turn, the concatenation so far equals a full render of the messages.
    for k in range(len(conv)):
        if conv[k]["role"] != "assistant" or k + 1 == len(conv):
            continue
        nxt = next((j for j in range(k + 1, len(conv)) if conv[j]["role"] == "assistant"), None)
        if nxt is None:
            continue
        ids, _ = _episode_ids(renderer, conv[:nxt] + [conv[nxt]], tools)
        full = tok.apply_chat_template(
            conv[:nxt], tools=tools or None, add_generation_prompt=True, return_dict=False
        )
        sampled = tok.encode(conv[nxt]["content"], add_special_tokens=False) + [im_end]
        assert ids == list(full) + sampled
    # And the whole conversation (its last turn closed the way the template closes it).
    ids, _ = _episode_ids(renderer, conv, tools)
    full = tok.apply_chat_template(conv, tools=tools or None, return_dict=False)
    assert ids + tok.encode("\n", add_special_tokens=False) == list(full)


def test_qwen_delta_text():
    tok = qwen_like_tokenizer()
    renderer = ChatRenderer(tok)
    delta = renderer.delta_ids([{"role": "tool", "name": "add", "content": "132"}])
    assert tok.decode(delta) == (
        "\n<|im_start|>user\n<tool_response>\n132\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = renderer.prompt_ids([{"role": "user", "content": "hi"}], [tool_schema(add)])
    assert '"name": "add"' in tok.decode(ids)  # the schema reached the system prompt


@pytest.mark.parametrize("task_name", ["agent_calculator", "agent_guess"])
def test_tiny_format_is_exact(task_name):
    task = get_task(task_name)
    tok = build_tokenizer(task.alphabet, chat_template=AGENT_CHAT_TEMPLATE)
    r = ChatRenderer(tok)
    assert r.stop_token_ids == [tok.eos_token_id] == r.turn_end_ids
    p = task.sample(0, 1)[0]
    assert r.prompt_ids([{"role": "user", "content": p.prompt}]) == tok.encode(p.prompt)
    assert tok.decode(r.delta_ids([{"role": "tool", "content": "132"}])) == "[132]"
    assert tok.decode(r.delta_ids([{"role": "user", "content": "1"}])) == "1"
    action = "add(4,5)" if task_name == "agent_calculator" else "4"
    assert r.action_text(tok.encode(action) + [tok.eos_token_id]) == action
    assert r.action_text(tok.encode("12")) == "12"  # cut by the token limit: no stop token


def test_a_template_without_chat_is_refused():
    tok = build_tokenizer("0123")
    tok.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        ChatRenderer(tok)
