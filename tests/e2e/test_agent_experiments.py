"""Agents through the CLI as README shows it: `python -m rlhf.train +experiment=agent_tool`
(the calculator tool task) with a CI-sized step budget. Asserts that the episode success rate
(env/success_rate, 0..1) rises by at least 0.2 from the first to the last fifth of the steps,
that the episodes really take more than one turn (env/turns_mean > 1: a tool call, then the
answer), and that samples.jsonl shows whole transcripts with the environment's turns marked.
README's agents table has the three-seed measurements at the experiment's full step count."""

import json
import re
from pathlib import Path

import pytest
from cli_run import train

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
REQUIRED_RISE = 0.2
STEPS = 60


def test_agent_tool_run_learns(tmp_path):
    run_dir = tmp_path / "run"
    proc = train(run_dir, "+experiment=agent_tool", f"trainer.total_steps={STEPS}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert len(rows) == STEPS
    success = [r["env/success_rate"] for r in rows]
    fifth = len(success) // 5
    first, last = sum(success[:fifth]) / fifth, sum(success[-fifth:]) / fifth
    assert last - first >= REQUIRED_RISE, f"success first fifth {first:.3f} -> last {last:.3f}"
    assert sum(r["env/turns_mean"] for r in rows[-fifth:]) / fifth > 1.0
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert samples and all(row["turns"] >= 1 for row in samples)
    # The whole transcript, each segment marked: the model's turns and the environment's.
    assert any({"model", "env"} <= {seg["by"] for seg in row["transcript"]} for row in samples)
    assert (run_dir / "report.png").is_file()


def test_the_docs_example_environment_runs(tmp_path):
    """docs/environments.md's example, exactly as written there, saved as my_envs.py and named
    by the CLI as `env.id=my_envs:capitals` with its own prompt file: a few steps run, every
    episode is played by the user's environment (no env errors), the run exits 0."""
    doc = (ROOT / "docs" / "environments.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", doc, re.DOTALL)
    (tmp_path / "my_envs.py").write_text(code)
    rows = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima")] * 2
    with (tmp_path / "capitals.jsonl").open("w") as f:
        for country, city in rows:
            f.write(json.dumps({"prompt": f"What is the capital of {country}?", "answer": city}))
            f.write("\n")
    run_dir = tmp_path / "run"
    proc = train(
        run_dir,
        "+experiment=agent_tool",
        "env.id=my_envs:capitals",
        f"data.path={tmp_path / 'capitals.jsonl'}",
        "trainer.total_steps=3",
        "rollout.prompts_per_step=4",
        "learner.micro_batch_size=16",
        pythonpath=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert len(metrics) == 3
    assert all(m["env/errors"] == 0 and m["env/timeouts"] == 0 for m in metrics)
    assert all(m["env/turns_mean"] >= 1 for m in metrics)
