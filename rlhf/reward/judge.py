"""reward.kind=judge: a generative judge: a vLLM engine inside the reward actor is asked a judge
prompt per sample and the score is parsed from its greedy answer.

For users without a trained reward model. `reward.judge.template` is a Python format string
with the fields `{prompt}`, `{response}` and `{answer}`; when the judge's tokenizer has a chat
template the filled-in text is sent as one user turn. The first capture group of
`reward.judge.score_pattern` (searched in the judge's output) is the score, divided by
`reward.judge.scale`. An answer without a score is an error for that sample
("exception: JudgeParseError: ..."), never a silent 0.
"""

from __future__ import annotations

import os
import re
from typing import Any

from rlhf.config import JudgeConfig


class JudgeScorer:
    def __init__(self, cfg: JudgeConfig, use_gpu: bool = False):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # the engine in this actor
        from vllm import LLM, SamplingParams

        self.cfg = cfg
        self.pattern = re.compile(cfg.score_pattern)
        self.llm = LLM(
            model=cfg.path,
            dtype=cfg.dtype,
            seed=0,
            enforce_eager=True,
            gpu_memory_utilization=cfg.gpu_memory_utilization,
            max_model_len=cfg.max_model_len,
        )
        self.tokenizer = self.llm.get_tokenizer()
        # greedy: the same sample always gets the same score
        self.params = SamplingParams(temperature=0.0, max_tokens=cfg.max_new_tokens)

    def render(self, sample) -> str:
        text = self.cfg.template.format(
            prompt=sample.prompt, response=sample.response, answer=sample.answer
        )
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        return text

    def parse(self, output: str) -> tuple[Any, str | None]:
        m = self.pattern.search(output)
        if m is None:
            return None, f"exception: JudgeParseError: no score in judge output {output[:60]!r}"
        try:
            return float(m.group(1)) / self.cfg.scale, None
        except ValueError:
            return None, f"exception: JudgeParseError: {m.group(1)[:30]!r} is not a number"

    def score(self, samples: list) -> list[tuple[Any, str | None]]:
        try:
            outs = self.llm.generate([self.render(s) for s in samples], self.params, use_tqdm=False)
        except Exception as e:  # e.g. a prompt longer than the judge's context
            return [(None, f"exception: {type(e).__name__}: {e}"[:200])] * len(samples)
        results = []
        for s, o in zip(samples, outs):
            text = o.outputs[0].text
            s.info["judge_output"] = text[:100]
            results.append(self.parse(text))
        return results
