"""Held-out evaluation during training: greedy accuracy and sampled pass@k, logged as `eval/*`.

The evaluation set is fixed at start-up: `eval.path` (read and checked like `data.path`), or,
for the built-in task, its whole problem table when it is small (`addition` has 49 problems) or
`eval.num_prompts` problems drawn with an RNG of its own. Every evaluation sends the same
requests — one greedy (temperature 0) and `eval.samples` sampled responses per prompt, each
with a fixed per-request seed — so the curve moves only because the weights do. It never draws
from the training PromptSource or any training RNG, so it cannot change the training stream
(exact resume holds with or without it).
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from dataclasses import replace
from typing import Any

from rlhf.batch import GenerationRequest, Sample
from rlhf.config import DataConfig, EvalConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n - c, k) / C(n, k); k <= n."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def request_seed(run_seed: int, prompt_index: int, sample_index: int) -> int:
    """A fixed seed per (run, eval prompt, sample): the same requests at every evaluation."""
    blob = f"eval:{run_seed}:{prompt_index}:{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


def eval_prompts(
    cfg: EvalConfig, data: DataConfig, seed: int, tokenizer_path: str = ""
) -> list[dict[str, Any]]:
    """The fixed evaluation prompts: dicts like PromptSource.next() returns (no group id)."""
    rng = random.Random(f"eval-set:{seed}")  # its own RNG: the training stream is untouched
    if cfg.path:
        from rlhf.data import PromptSource

        source = PromptSource(replace(data, path=cfg.path, shuffle=False), seed, tokenizer_path)
        rows = source.usable_rows()
        picked = sorted(rng.sample(rows, min(cfg.num_prompts, len(rows))))
        return [source.row(i) for i in picked]
    from rlhf.tasks import get_task

    task = get_task(data.task)
    if task.finite:
        table = task.all_problems()
        problems = table if len(table) <= cfg.num_prompts else rng.sample(table, cfg.num_prompts)
    else:
        problems = task.sample(rng, cfg.num_prompts)
    return [{"prompt": p.prompt, "answer": p.answer, "fields": dict(p.fields)} for p in problems]


class Evaluator:
    """`due(step)` says when; `run(engines, rewards, step)` evaluates the engines' current
    weights and returns `eval/*` metrics. `rewards` is the run's RewardGroup (anything whose
    `score(samples)` returns ObjectRefs of scored sample lists)."""

    def __init__(
        self, cfg: EvalConfig, prompts: list[dict[str, Any]], *, seed: int, total_steps: int
    ):
        self.cfg, self.prompts, self.total_steps = cfg, prompts, total_steps
        self.requests = self._requests(seed)

    @classmethod
    def from_config(
        cls,
        cfg: EvalConfig,
        data: DataConfig,
        *,
        seed: int,
        total_steps: int,
        tokenizer_path: str = "",
    ) -> Evaluator:
        return cls(
            cfg, eval_prompts(cfg, data, seed, tokenizer_path), seed=seed, total_steps=total_steps
        )

    def due(self, step: int) -> bool:
        """Step 0 (before training), every `eval.every` steps, and the last step."""
        every = self.cfg.every
        return bool(every) and (step == 0 or step % every == 0 or step == self.total_steps)

    def _requests(self, seed: int) -> list[GenerationRequest]:
        out = []
        for i, p in enumerate(self.prompts):
            common = dict(
                prompt_id=i,
                prompt=p["prompt"],
                prompt_token_ids=p.get("prompt_token_ids"),
                answer=p["answer"],
                fields=p.get("fields", {}),
            )
            # sample_index 0 is the greedy response; 1..samples the sampled ones.
            out.append(
                GenerationRequest(
                    sample_index=0, seed=request_seed(seed, i, 0), temperature=0.0, **common
                )
            )
            out += [
                GenerationRequest(
                    sample_index=j,
                    seed=request_seed(seed, i, j),
                    temperature=self.cfg.temperature,
                    **common,
                )
                for j in range(1, self.cfg.samples + 1)
            ]
        return out

    def run(self, engines: list, rewards, step: int) -> dict[str, float]:
        import ray

        from rlhf.placement import shard

        start = time.perf_counter()
        # Whole prompts per engine, so each engine's batch holds complete groups.
        per_prompt = 1 + self.cfg.samples
        groups = [
            self.requests[i : i + per_prompt] for i in range(0, len(self.requests), per_prompt)
        ]
        parts = [sum(part, []) for part in shard(groups, len(engines))]
        samples = [
            s
            for out in ray.get([e.generate.remote(part) for e, part in zip(engines, parts) if part])
            for s in out
        ]
        scored = [s for out in ray.get(rewards.score(samples)) for s in out]
        metrics = self.metrics(scored, sample_indices=[r.sample_index for p in parts for r in p])
        metrics["eval/time_s"] = time.perf_counter() - start
        return metrics

    def metrics(self, samples: list[Sample], sample_indices: list[int]) -> dict[str, float]:
        """eval/* from scored samples; `sample_indices[i]` is samples[i]'s request index
        (0 = greedy)."""
        threshold = self.cfg.correct_threshold
        greedy = [s for s, j in zip(samples, sample_indices) if j == 0]
        sampled: dict[int, list[Sample]] = {}
        for s, j in zip(samples, sample_indices):
            if j:
                sampled.setdefault(s.group_id, []).append(s)
        out = {
            "eval/greedy_reward": _mean([s.reward for s in greedy]),
            "eval/greedy_accuracy": _mean([float(s.reward >= threshold) for s in greedy]),
            "eval/sampled_reward": _mean([s.reward for g in sampled.values() for s in g]),
            "eval/response_len_mean": _mean([len(s.response_ids) for s in samples]),
            "eval/truncated_frac": _mean([float(s.finish_reason == "length") for s in samples]),
            "eval/prompts": float(len(greedy)),
        }
        for k in self.cfg.pass_k:
            out[f"eval/pass@{k}"] = _mean(
                [
                    pass_at_k(len(g), sum(s.reward >= threshold for s in g), k)
                    for g in sampled.values()
                ]
            )
        return out


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")
