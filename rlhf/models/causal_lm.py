"""The LLM policy as the learners see it: a Hugging Face causal LM that scores actions, and,
for PPO, its critic.

Calling it on a batch returns per-action logprobs and entropies in the Batch layout ([B, A] with
A = T - 1: action j predicts token j + 1). Logits are divided by the sampling temperature so
the logprobs are those of the distribution vLLM sampled from. With a critic (a value head on its
own copy of the backbone, `model.critic_path` or the policy's weights) it also returns V(s_j),
the value of the state whose next action is position j.

Policy and critic live in one module so one DeepSpeed engine (one ZeRO partitioning, one
checkpoint, one backward) trains both, each in its own optimizer param group with its own
learning rate; only the policy's parameters are sent to the rollout engines.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor, nn

from rlhf.algos import entropy_from_logits, logprobs_from_logits
from rlhf.batch import Batch


class CausalLMCritic(nn.Module):
    """V(s) for every prefix: a transformer backbone (no LM head) and a linear value head."""

    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.value_head = nn.Linear(hidden_size, 1)
        # Small init (as OpenRLHF) so the first values are near 0, the scale of the rewards.
        nn.init.normal_(self.value_head.weight, std=1.0 / (hidden_size + 1))
        nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_pretrained(
        cls, path: str, dtype: str, gradient_checkpointing: bool = False
    ) -> CausalLMCritic:
        from transformers import AutoModel

        backbone = AutoModel.from_pretrained(
            path, dtype=getattr(torch, dtype), use_safetensors=True
        )
        if gradient_checkpointing:
            backbone.gradient_checkpointing_enable()
        backbone.config.use_cache = False
        critic = cls(backbone, backbone.config.hidden_size)
        return critic.to(getattr(torch, dtype))

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask [B, T] -> values [B, A] (A = T - 1), float32."""
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False
        ).last_hidden_state[:, :-1]
        return self.value_head(hidden).squeeze(-1).float()


class CausalLMPolicy(nn.Module):
    # model.lora (a LoraConfig) once rlhf.models.lora.add_adapter wrapped `lm` with PEFT
    lora = None

    def __init__(
        self, lm: nn.Module, temperature: float = 1.0, critic: CausalLMCritic | None = None
    ):
        super().__init__()
        self.lm = lm
        self.temperature = temperature
        self.critic = critic

    @property
    def has_critic(self) -> bool:
        return self.critic is not None

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: str,
        temperature: float,
        gradient_checkpointing: bool = False,
        critic_path: str | None = None,
    ) -> CausalLMPolicy:
        """critic_path: build a critic from that model folder (the policy's own path for a
        copy of its architecture and weights); None: no critic."""
        from transformers import AutoModelForCausalLM

        lm = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, dtype), use_safetensors=True
        )
        if gradient_checkpointing:
            lm.gradient_checkpointing_enable()
        lm.config.use_cache = False
        critic = (
            CausalLMCritic.from_pretrained(critic_path, dtype, gradient_checkpointing)
            if critic_path
            else None
        )
        return cls(lm, temperature, critic)

    def param_groups(self, lr: float, critic_lr: float) -> list[dict]:
        """Optimizer param groups: the policy at lr, the critic (if any) at critic_lr."""
        groups = [{"params": [p for p in self.lm.parameters() if p.requires_grad], "lr": lr}]
        if self.critic is not None:
            groups.append(
                {
                    "params": [p for p in self.critic.parameters() if p.requires_grad],
                    "lr": critic_lr,
                }
            )
        return groups

    def forward(
        self, batch: Batch, with_entropy: bool = True
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """-> logprobs [B, A], entropy [B, A] (or None), values [B, A] (None without a critic)."""
        logits = (
            self.lm(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            .logits[:, :-1]
            .float()
            / self.temperature
        )
        logprobs = logprobs_from_logits(logits, batch.input_ids[:, 1:])
        entropy = entropy_from_logits(logits) if with_entropy else None
        values = (
            self.critic(batch.input_ids, batch.attention_mask) if self.critic is not None else None
        )
        return logprobs, entropy, values

    def rollout_state(self) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters under the names the rollout engine loads: the HF names, or with a LoRA
        adapter only the adapter's (the engines keep the base), then a fully trained lm_head
        under its HF name (model.lora.train_lm_head: it goes into the engines' base)."""
        if self.lora is not None:
            from itertools import chain

            from rlhf.models.lora import adapter_state, head_state

            return chain(adapter_state(self.lm), head_state(self.lm))
        return self.lm.named_parameters()
