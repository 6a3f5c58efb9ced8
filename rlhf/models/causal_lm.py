"""The LLM policy as the learners see it: a Hugging Face causal LM that scores actions.

Calling it on a batch returns per-action logprobs and entropies in the Batch layout ([B, A] with
A = T - 1: action j predicts token j + 1). Logits are divided by the sampling temperature so
the logprobs are those of the distribution vLLM sampled from.
"""

from __future__ import annotations

from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from rlhf.algos import entropy_from_logits, logprobs_from_logits
from rlhf.batch import Batch


class CausalLMPolicy(nn.Module):
    has_critic = False

    def __init__(self, lm: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.lm = lm
        self.temperature = temperature

    @classmethod
    def from_pretrained(cls, path: str, dtype: str, temperature: float,
                        gradient_checkpointing: bool = False) -> "CausalLMPolicy":
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                  use_safetensors=True)
        if gradient_checkpointing:
            lm.gradient_checkpointing_enable()
        lm.config.use_cache = False
        return cls(lm, temperature)

    def forward(self, batch: Batch, with_entropy: bool = True
                 ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
        """-> logprobs [B, A], entropy [B, A] (or None), values None (no critic)."""
        logits = self.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                         use_cache=False).logits[:, :-1].float() / self.temperature
        logprobs = logprobs_from_logits(logits, batch.input_ids[:, 1:])
        entropy = entropy_from_logits(logits) if with_entropy else None
        return logprobs, entropy, None

    def rollout_state(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters under the names the rollout engine loads (the HF names)."""
        return self.lm.named_parameters()
