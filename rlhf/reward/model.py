"""reward.kind=model: a Hugging Face sequence-classification reward model scores prompt+response.

The model (one output label) is loaded from a local folder inside the reward actor, on its GPU
when `reward.gpus_per_actor > 0`, else on the CPU, and scores samples in batches of
`reward.model.batch_size`. A tokenizer with a chat template renders the pair as a user turn and
an assistant turn (the format reward models are trained on); without one the text is
`prompt + response`. Inputs longer than `max_length` keep their end (the response).
With `normalize`, scores are standardised by a running mean/std over every sample scored so far
(this batch included), so the reward scale does not drift with the model's raw logit scale;
those moments go into checkpoints (`state` / `load_state`, via the reward actor and the
pipeline), so a resumed run normalises as the uninterrupted one would.

`build_tiny_reward_model` writes a tiny randomly initialised reward model for tests and smoke
runs, offline, with the tiny policy's char-level tokenizer.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rlhf.config import RewardModelConfig


class RunningMoments:
    """Mean and variance over every value seen (Chan et al.'s parallel update)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def update(self, values: list[float]) -> None:
        if not values:
            return
        n_b = len(values)
        mean_b = sum(values) / n_b
        m2_b = sum((v - mean_b) ** 2 for v in values)
        delta, n = mean_b - self.mean, self.n + n_b
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * self.n * n_b / n
        self.n = n

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.n) if self.n > 1 else 1.0

    def state_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.n, self.mean, self.m2 = int(state["n"]), float(state["mean"]), float(state["m2"])


def render(tokenizer, prompt: str, response: str) -> str:
    """The text the reward model reads: its chat template when it has one."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False,
        )
    return prompt + response


class RewardModelScorer:
    def __init__(self, cfg: RewardModelConfig, use_gpu: bool = False):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.cfg = cfg
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(cfg.path)
        self.tokenizer.truncation_side = "left"  # keep the response
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                cfg.path, dtype=getattr(torch, cfg.dtype)
            )
            .to(self.device)
            .eval()
        )
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"reward.model.path={cfg.path}: a reward model has one output label, "
                f"this one has {self.model.config.num_labels}"
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # sequence classification pools the last non-pad token: it must know the pad id
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.moments = RunningMoments() if cfg.normalize else None

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the normalisation moments (none without `normalize`)."""
        return {"moments": None if self.moments is None else self.moments.state_dict()}

    def load_state(self, state: dict[str, Any]) -> None:
        if self.moments is not None and state.get("moments") is not None:
            self.moments.load_state_dict(state["moments"])

    def raw_scores(self, texts: list[str]) -> list[float]:
        import torch

        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(texts), self.cfg.batch_size):
                enc = self.tokenizer(
                    texts[i : i + self.cfg.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.cfg.max_length,
                    add_special_tokens=False,
                ).to(self.device)
                out += self.model(**enc).logits[:, 0].float().cpu().tolist()
        return out

    def score(self, samples: list) -> list[tuple[Any, str | None]]:
        try:
            values = self.raw_scores(
                [render(self.tokenizer, s.prompt, s.response) for s in samples]
            )
        except Exception as e:  # e.g. CUDA OOM on one batch: those samples get the fallback
            err = f"exception: {type(e).__name__}: {e}"[:200]
            return [(None, err)] * len(samples)
        if self.moments is not None:
            self.moments.update([v for v in values if math.isfinite(v)])
            values = [(v - self.moments.mean) / (self.moments.std + 1e-8) for v in values]
        return [(v, None) for v in values]


def build_tiny_reward_model(folder: str | Path, task: str = "addition", seed: int = 0) -> Path:
    """A tiny random Qwen2 sequence-classification model (one label) with the tiny policy's
    char-level tokenizer for `task`, saved as a normal HF folder. Nothing is downloaded."""
    import torch
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    from rlhf.models.tiny import build_tokenizer
    from rlhf.tasks import get_task

    folder = Path(folder)
    tok = build_tokenizer(get_task(task).alphabet)
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(
        Qwen2Config(
            vocab_size=len(tok),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=128,
            num_labels=1,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            dtype="float32",
        )
    ).float()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder
