"""The reward kinds in real CLI runs (Ray, vLLM, DeepSpeed, the tiny model):

- GRPO on the built-in `fractions` task, scored by the math checker (math-verify through the
  task reward, in the killable reward workers), learns: reward/mean rises by >= 0.2, and some
  rewarded answers are equivalent to the reference without being the same string.
- A composed reward with a tiny sequence-classification reward model (built offline here) runs
  end to end: reward/rm and reward/math are logged, reward/mean is their weighted sum, and the
  logged samples' rm scores equal transformers' scores computed directly. A third component runs
  each response in the code sandbox inside the Ray reward actor (isolation available there, no
  errors), and a canary secret in the run's environment appears nowhere in the run folder.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(run_dir: Path, *overrides: str) -> list[dict]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.train",
            "+experiment=grpo",
            "data.task=fractions",
            "rollout.max_new_tokens=16",
            "eval=off",
            "logger.wandb.mode=disabled",
            f"hydra.run.dir={run_dir}",
            *overrides,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]


def test_grpo_learns_the_fractions_task_with_the_math_checker(tmp_path):
    steps = 80
    rows = _run(
        tmp_path / "run", f"trainer.total_steps={steps}", "reward.fn=task", "logger.samples_every=1"
    )
    r = [m["reward/mean"] for m in rows]
    k = steps // 5
    first, last = sum(r[:k]) / k, sum(r[-k:]) / k
    print(f"fractions: reward/mean first fifth {first:.3f} -> last fifth {last:.3f}")
    assert last - first >= 0.2, (first, last)
    assert sum(m["reward/errors"] + m["reward/timeouts"] + m["reward/crashes"] for m in rows) == 0
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").open()]
    equivalent = [s for s in samples if s["reward"] == 1.0 and s["response"].strip() != s["answer"]]
    print(
        f"rewarded answers written differently from the reference: {len(equivalent)} of "
        f"{sum(s['reward'] == 1.0 for s in samples)}"
    )
    assert equivalent  # the checker, not string equality, decided these


def test_composed_reward_with_a_tiny_reward_model_runs_end_to_end(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.reward.model import build_tiny_reward_model
    from rlhf.tasks import get_task

    rm = build_tiny_reward_model(tmp_path / "rm", task="fractions")
    data = tmp_path / "fractions.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": p.prompt, "answer": p.answer, "tests": "assert solve(2) == 4"})
            + "\n"
            for p in get_task("fractions").all_problems()
        )
    )
    canary = "rlhf-canary-run-5d2a"
    os.environ["RLHF_REWARD_CANARY"] = canary  # the run (driver, Ray, actors) inherits it
    try:
        rows = _run(
            tmp_path / "run",
            "trainer.total_steps=3",
            "logger.samples_every=1",
            f"data.path={data}",
            f"reward.model.path={rm}",
            "logger.wandb.mode=offline",
            "reward.components=[{kind: model, name: rm, weight: 0.5}, "
            "{kind: math, weight: 1.0}, {kind: sandbox, name: code, weight: 0.0}]",
        )
    finally:
        del os.environ["RLHF_REWARD_CANARY"]
    assert [m["step"] for m in rows] == [1, 2, 3]
    for m in rows:
        assert m["reward/mean"] == pytest.approx(0.5 * m["reward/rm"] + m["reward/math"], abs=1e-5)
        assert m["reward/errors"] == m["reward/timeouts"] == m["reward/crashes"] == 0
        assert m["reward/code"] == 0.0  # the tiny model's answers are not Python that passes
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert canary.encode() not in f.read_bytes(), f
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").open()]
    model = AutoModelForSequenceClassification.from_pretrained(rm).eval()
    tok = AutoTokenizer.from_pretrained(rm)
    from rlhf.reward.math import math_reward

    checked = 0
    with torch.no_grad():
        for s in samples[:16]:
            text = (
                tok.apply_chat_template(
                    [
                        {"role": "user", "content": s["prompt"]},
                        {"role": "assistant", "content": s["response"]},
                    ],
                    tokenize=False,
                )
                if tok.chat_template
                else s["prompt"] + s["response"]
            )
            score = (
                model(**tok(text, return_tensors="pt", add_special_tokens=False))
                .logits[0, 0]
                .item()
            )
            want = 0.5 * score + math_reward(s["prompt"], s["response"], s["answer"])
            assert s["reward"] == pytest.approx(want, abs=1e-4), s
            checked += 1
    assert checked == 16
