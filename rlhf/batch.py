"""The two data types that flow through the loop.

`Sample` is one generated response (LLM) or one trajectory segment of one env (gym): ragged,
plain Python/numpy, cheap to ship between Ray actors. `Batch` is many samples collated into
padded tensors for the learners. Per-action tensors share the layout `[B, A]`:

- LLM: `input_ids[B, T]` is prompt + response, right-padded; action position j scores the
  token `input_ids[:, j + 1]`, so `A = T - 1` and `action_mask` is 1 on response tokens.
- Gym: action position t is env step t of the segment, `A = steps_per_env`, `obs[B, A, *obs]`.

An agent episode (rlhf/rollout/agent_loop.py) is one LLM sample whose response interleaves
sampled tokens and environment tokens: `response_mask` marks the sampled ones (the only ones
with a loss), so `action_mask` has interior gaps, and `turn_rewards` put each turn's reward on
the turn's last sampled token. An episode lost to an environment failure keeps its row (the
batch shape stays) with no loss and no weight in its group's baseline.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class GenerationRequest:
    """One response to generate: the unit the rollout pipeline issues to an engine.

    `seed` is derived from (run seed, prompt id, sample index), so the same prompt regenerated
    by the same weights gives the same tokens, whichever engine serves it and whenever.
    """

    prompt_id: int  # the ledger id of the prompt (samples of one prompt share it: the group)
    sample_index: int  # 0 .. samples_per_prompt - 1
    seed: int  # vLLM SamplingParams(seed=...)
    prompt: str = ""  # text, already rendered (chat template applied) when prompt_token_ids is None
    prompt_token_ids: list[int] | None = None  # when set, sent to the engine instead of text
    answer: str = ""  # reference answer for the reward function
    fields: dict[str, Any] = field(default_factory=dict)  # other dataset columns
    temperature: float | None = None  # None: the rollout config's (0 = greedy, for eval)
    max_new_tokens: int | None = None  # None: the rollout config's


@dataclass
class Sample:
    group_id: int  # samples sharing it answer the same prompt (gym: the env index)
    prompt_ids: list[int] = field(default_factory=list)
    response_ids: list[int] = field(default_factory=list)
    rollout_logprobs: list[float] = field(default_factory=list)  # behaviour logprob per action
    prompt: str = ""
    response: str = ""
    answer: str = ""  # reference answer handed to the reward function
    fields: dict[str, Any] = field(default_factory=dict)  # other dataset columns for the reward fn
    finish_reason: str = ""  # LLM: "stop" | "length"
    weight_version: int = 0  # the policy version that generated it
    reward: float = 0.0  # LLM: the sequence reward; gym: sum of step rewards
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"reward_error": "timeout"}
    # Gym trajectory segment (None for LLM samples). Truncated episodes are bootstrapped by the
    # runner (gamma * V(final obs) added to that step's reward), so `dones` means "no value
    # flows back across this step" for both terminated and truncated endings.
    obs: np.ndarray | None = None  # [A, *obs_shape]
    actions: np.ndarray | None = None  # [A] discrete or [A, act_dim] continuous
    step_rewards: np.ndarray | None = None  # [A]
    dones: np.ndarray | None = None  # [A]
    values: np.ndarray | None = None  # [A] V(s_t) from the behaviour policy's critic
    last_value: float = 0.0  # V(s_A), bootstraps the segment cut mid-episode
    # Agent episodes (None for single-turn samples and trajectories). response_mask: one per
    # response token, 1 = sampled by the engine, 0 = the environment's (no loss). turn_rewards:
    # (response position of the turn's last sampled token, the turn's reward); the sequence
    # reward `reward` is their sum plus the reward kind's score, if one is configured.
    response_mask: list[int] | None = None
    turn_rewards: list[tuple[int, float]] | None = None

    @property
    def is_trajectory(self) -> bool:
        return self.obs is not None


@dataclass
class Batch:
    action_mask: Tensor  # [B, A] 1 on response tokens / env steps
    rollout_logprobs: Tensor  # [B, A] logprob of each action under the behaviour policy
    token_rewards: Tensor  # [B, A] LLM: reward on the last response token; gym: step rewards
    group_ids: Tensor  # [B] long
    input_ids: Tensor | None = None  # [B, T] LLM only, T = A + 1
    attention_mask: Tensor | None = None  # [B, T] LLM only
    obs: Tensor | None = None  # [B, A, *obs_shape] gym only
    actions: Tensor | None = None  # [B, A] or [B, A, act_dim] gym only
    dones: Tensor | None = None  # [B, A] gym only
    last_values: Tensor | None = None  # [B] gym only
    # LLM only. The sequence reward of each sample ([B]): an empty response has no action
    # position to carry it in token_rewards, yet its reward must count in its group's baseline.
    seq_rewards: Tensor | None = None
    truncated: Tensor | None = (
        None  # [B] 1 where the response was cut at max_new_tokens (finish_reason "length")
    )
    # Filled in by the learners and the trainer as the step proceeds.
    old_logprobs: Tensor | None = None  # [B, A] learner's logprobs before the update
    ref_logprobs: Tensor | None = None  # [B, A] frozen reference model (kl_coef > 0)
    values: Tensor | None = None  # [B, A] critic values before the update
    advantages: Tensor | None = None  # [B, A]
    returns: Tensor | None = None  # [B, A]
    # Off-policy correction weights (algos.ROLLOUT_CORRECTIONS) multiplying the per-token
    # policy loss; None = all ones.
    is_weights: Tensor | None = None  # [B, A]

    def __len__(self) -> int:
        return self.action_mask.shape[0]

    def _tensors(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                yield f.name, value

    def index(self, idx: Tensor | slice) -> Batch:
        """Rows `idx` of every tensor field."""
        return replace(self, **{name: t[idx] for name, t in self._tensors()})

    def split(self, n: int) -> list[Batch]:
        """`n` contiguous, equal chunks (len must divide evenly: config validation ensures it)."""
        if len(self) % n:
            raise ValueError(f"cannot split a batch of {len(self)} into {n} equal parts")
        size = len(self) // n
        return [self.index(slice(i * size, (i + 1) * size)) for i in range(n)]

    @staticmethod
    def cat(parts: list[Batch]) -> Batch:
        first = parts[0]
        return replace(
            first,
            **{name: torch.cat([getattr(p, name) for p in parts]) for name, _ in first._tensors()},
        )

    def trimmed(self) -> Batch:
        """LLM rows with the padding columns past the longest row cut off: `[B, T]` tensors
        keep L = its real length (attention_mask, at least 2), `[B, A]` tensors keep L - 1,
        `[B]` tensors are unchanged. Rows are right-padded, so the cut columns are padding in
        every row, and a causal model's logprob at action j reads tokens <= j + 1 only:
        what remains scores exactly as in the untrimmed batch."""
        T = self.input_ids.shape[1]
        keep = min(T, max(int(self.attention_mask.sum(1).max()), 2))
        if keep == T:
            return self
        return replace(
            self,
            **{
                name: t[:, :keep] if name in ("input_ids", "attention_mask") else t[:, : keep - 1]
                for name, t in self._tensors()
                if t.dim() >= 2
            },
        )

    def to(self, device: torch.device | str) -> Batch:
        return replace(self, **{name: t.to(device) for name, t in self._tensors()})

    def learning_rows(self) -> Batch:
        """The rows the learner optimises over: sequences for text, single env steps for
        trajectories (so PPO minibatches shuffle over steps, not whole segments)."""
        return self.flatten_steps() if self.obs is not None else self

    def flatten_steps(self) -> Batch:
        """Gym: every env step becomes its own row ([B, A] -> [B*A, 1]), so PPO minibatches
        shuffle over steps rather than whole segments. Only valid after advantages exist."""
        out = {}
        for name, t in self._tensors():
            if name in ("input_ids", "attention_mask"):
                raise ValueError("flatten_steps is for gym batches")
            if name in ("group_ids", "last_values", "seq_rewards", "truncated"):  # per row [B]
                t = t.repeat_interleave(self.action_mask.shape[1])
                out[name] = t
                continue
            out[name] = t.reshape(-1, 1, *t.shape[2:])
        return replace(self, **out)


def lost(s: Sample) -> bool:
    """An agent episode cut by an environment failure (it raised, hung or died)."""
    return s.response_mask is not None and bool(s.info.get("env_error"))


def collate(samples: list[Sample], pad_id: int = 0) -> Batch:
    """Pad a list of samples into a Batch (all LLM samples or all trajectories)."""
    if not samples:
        raise ValueError("collate needs at least one sample")
    if samples[0].is_trajectory:
        return _collate_trajectories(samples)
    return _collate_responses(samples, pad_id)


def _collate_responses(samples: list[Sample], pad_id: int) -> Batch:
    B = len(samples)
    T = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    A = max(T - 1, 1)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    action_mask = torch.zeros((B, A))
    rollout_logprobs = torch.zeros((B, A))
    token_rewards = torch.zeros((B, A))
    for i, s in enumerate(samples):
        p, r = len(s.prompt_ids), len(s.response_ids)
        input_ids[i, : p + r] = torch.tensor(s.prompt_ids + s.response_ids, dtype=torch.long)
        attention_mask[i, : p + r] = 1
        if r == 0:
            continue  # no action to train; its reward reaches the advantages via seq_rewards
        start = p - 1  # action j predicts token j + 1: the first response token is at p
        if s.rollout_logprobs:
            rollout_logprobs[i, start : start + r] = torch.tensor(s.rollout_logprobs)
        if s.response_mask is None:
            action_mask[i, start : start + r] = 1
            token_rewards[i, start + r - 1] = s.reward
            continue
        if lost(s):
            continue  # no loss; a group of its own below (no weight in its group's baseline)
        action_mask[i, start : start + r] = torch.tensor(s.response_mask, dtype=torch.float32)
        sampled = [j for j, m in enumerate(s.response_mask) if m]
        if not sampled:
            continue
        turns = s.turn_rewards or []
        for pos, value in turns:  # each turn's reward on its last sampled token
            token_rewards[i, start + max(pos, sampled[0])] += value
        # What the reward kind added to the episode's return lands on the last sampled token.
        token_rewards[i, start + sampled[-1]] += s.reward - sum(v for _, v in turns)
    group_ids = torch.tensor(
        [-1 - i if lost(s) else s.group_id for i, s in enumerate(samples)], dtype=torch.long
    )
    return Batch(
        action_mask=action_mask,
        rollout_logprobs=rollout_logprobs,
        token_rewards=token_rewards,
        group_ids=group_ids,
        input_ids=input_ids,
        attention_mask=attention_mask,
        seq_rewards=torch.tensor([0.0 if lost(s) else float(s.reward) for s in samples]),
        truncated=torch.tensor([float(s.finish_reason == "length") for s in samples]),
    )


def _collate_trajectories(samples: list[Sample]) -> Batch:
    def stack(name, dtype=torch.float32):
        return torch.as_tensor(np.stack([getattr(s, name) for s in samples]), dtype=dtype)

    first_action = samples[0].actions
    action_dtype = torch.long if np.issubdtype(first_action.dtype, np.integer) else torch.float32
    obs = stack("obs")
    return Batch(
        action_mask=torch.ones(obs.shape[:2]),
        rollout_logprobs=torch.as_tensor(
            np.stack([s.rollout_logprobs for s in samples]), dtype=torch.float32
        ),
        token_rewards=stack("step_rewards"),
        group_ids=torch.tensor([s.group_id for s in samples], dtype=torch.long),
        obs=obs,
        actions=stack("actions", action_dtype),
        dones=stack("dones"),
        values=stack("values"),
        last_values=torch.tensor([s.last_value for s in samples], dtype=torch.float32),
    )
