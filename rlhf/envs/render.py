"""Messages to token ids for the agent loop, with the model's own chat template.

The loop never re-tokenizes what the engine sampled: an episode's ids are ``prompt_ids(first
messages, tools)``, then each model turn's sampled ids verbatim (ending with a stop token), then
``delta_ids(the environment's new messages)``, and so on. A delta is the text that a full render
of the conversation adds after the assistant turn's end-of-turn token, up to and including the
next assistant generation prompt, found by rendering a fixed stand-in conversation with and
without the new messages. So for a chat template whose rendering of earlier turns does not
depend on later ones (Qwen2's, the tiny model's), ``prompt_ids(all messages so far)`` equals the
concatenation whenever the sampled ids are the tokenization of their text; when they are not,
the concatenation is still what the engine saw, which is what matters for training.

The end-of-turn token is read off the template (what it writes right after an assistant
message's content: ``<|im_end|>`` for Qwen, ``<eos>`` for the tiny model); it and the
tokenizer's EOS are ``stop_token_ids``. A turn cut by the token limit has no stop token; the
loop appends ``turn_end_ids`` (environment tokens, mask 0) before the delta so that the
transcript stays in the template's shape.
"""

from __future__ import annotations

from typing import Any

from rlhf.envs.base import Message

# A stand-in conversation: deltas are rendered after its assistant turn.
_BASE: list[Message] = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
]


class ChatRenderer:
    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{type(tokenizer).__name__} has no chat template")
        self.tokenizer = tokenizer
        base = self._text(_BASE, add_generation_prompt=False)
        content_end = base.rindex(_BASE[-1]["content"]) + len(_BASE[-1]["content"])
        after = self._encode(base[content_end:])
        if not after:
            raise ValueError("the chat template writes nothing after an assistant message")
        self.turn_end_ids: list[int] = after[:1]
        self._base_cut = content_end + len(tokenizer.decode(after[:1]))
        self._base_text = base
        stops = [after[0]]
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
            stops.append(tokenizer.eos_token_id)
        self.stop_token_ids: list[int] = stops

    def _text(self, messages: list[Message], add_generation_prompt: bool, tools=None) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, messages: list[Message], tools: list[dict] | None = None) -> list[int]:
        """The episode's first context: ``messages`` (with ``tools`` schemas where the template
        renders them), ending with the assistant generation prompt."""
        ids = self.tokenizer.apply_chat_template(
            messages,
            tools=tools or None,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        return list(ids)

    def delta_ids(self, messages: list[Message]) -> list[int]:
        """The ids of the environment's ``messages`` after a model turn that ended with a stop
        token, ending with the next assistant generation prompt."""
        full = self._text(_BASE + list(messages), add_generation_prompt=True)
        if not full.startswith(self._base_text[: self._base_cut]):
            raise ValueError("the chat template renders earlier turns differently after new ones")
        return self._encode(full[self._base_cut :])

    def action_text(self, sampled_ids: list[int]) -> str:
        """The text of a model turn for ``env.step``: the ids before the first stop token."""
        ids = list(sampled_ids)
        for i, t in enumerate(ids):
            if t in self.stop_token_ids:
                ids = ids[:i]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=False)
