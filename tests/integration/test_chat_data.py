"""A verl-style chat dataset trains end to end with the tiny model.

The test builds a parquet file whose prompts are chat `messages` lists (rendered by the tiny
tokenizer's chat template into the task format), whose answers sit in a nested
`reward_model.ground_truth` column, and which holds one bad row (no messages). With
`data.on_bad_row=skip` the run skips and reports that row, trains with the rule reward
`rlhf.reward.rules:exact_match`, and the reward must rise.

Margin: reward/mean averaged over the last fifth of the steps must exceed the first fifth by
0.15. The default task's prompts are rendered byte-identically to the plain-text default run,
whose rise over its first 120 steps is well above that (README "Results"); a chat template that
mangled the prompts or a broken answer column would leave the reward flat near its start.
"""

import json
from pathlib import Path

import pytest
from cli_run import train

pytestmark = pytest.mark.integration
STEPS = 120
REQUIRED_RISE = 0.15


def _chat_parquet(path: Path) -> Path:
    import datasets

    rows = [
        {
            "prompt": [
                {"role": "system", "content": "Add the numbers."},
                {"role": "user", "content": f"{a}+{b}="},
            ],
            "reward_model": {"ground_truth": str(a + b), "style": "rule"},
            "data_source": "addition",
        }
        for a in range(7)
        for b in range(7)
    ]
    rows.insert(
        17,
        {
            "prompt": None,
            "reward_model": {"ground_truth": "3", "style": "rule"},
            "data_source": "addition",
        },
    )
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    return path


def test_chat_parquet_trains_end_to_end(tmp_path):
    data = _chat_parquet(tmp_path / "train.parquet")
    run_dir = tmp_path / "run"
    proc = train(
        run_dir,
        "+experiment=grpo",
        "data=chat",
        f"data.path={data}",
        "data.on_bad_row=skip",
        "data.max_bad_frac=0.05",
        "reward.fn=rlhf.reward.rules:exact_match",
        f"trainer.total_steps={STEPS}",
        "eval=off",
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "skipped 1 bad rows of 50" in log and "row 18" in log
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    rewards = [r["reward/mean"] for r in rows if "reward/mean" in r]
    assert len(rewards) == STEPS
    fifth = STEPS // 5
    first, last = sum(rewards[:fifth]) / fifth, sum(rewards[-fifth:]) / fifth
    assert last - first >= REQUIRED_RISE, f"reward first fifth {first:.3f} -> last fifth {last:.3f}"
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert samples and all("+" in s["prompt"] and "Add" not in s["prompt"] for s in samples)
