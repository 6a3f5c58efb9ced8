"""Third-party environments end to end through `python -m rlhf.train`, unchanged, on the real
packages (the dev extra installs them): a SkyRL-gym environment (`env.id=skyrl_gym:...`) for a
CI-sized 2 steps. These check
that the adapters run in the real pipeline (Ray, vLLM agent loop / reward actor, DeepSpeed), not
that the tiny model learns them: it never writes SkyRL's `#### answer` format, so every SkyRL
episode runs to SkyRL's own turn limit, which the test asserts."""

import json

import pytest
from cli_run import train

pytestmark = pytest.mark.e2e


def test_skyrl_gym_multi_turn_env_runs_unchanged(tmp_path):
    """SkyRL-gym's gsm8k_multi_turn (its per-turn rewards, its own follow-up messages, its own
    max_turns=2 ending the episode) played by the calculator-format tiny model on a prompt file."""
    with (tmp_path / "sums.jsonl").open("w") as f:
        for a, b in [(47, 85), (12, 30), (66, 19), (23, 71)]:
            f.write(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n")
    run_dir = tmp_path / "run"
    proc = train(
        run_dir,
        "+experiment=agent_tool",
        "env.id=skyrl_gym:gsm8k_multi_turn",
        "+env.kwargs.max_turns=2",
        f"data.path={tmp_path / 'sums.jsonl'}",
        "trainer.total_steps=2",
        "rollout.prompts_per_step=4",
        "learner.micro_batch_size=16",
        "logger.samples_every=1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert len(metrics) == 2
    assert all(m["env/errors"] == 0 and m["env/timeouts"] == 0 for m in metrics)
    # SkyRL's done (after its 2 turns), not our env.max_turns=4 and not a truncation, ends them.
    assert all(m["env/turns_mean"] == 2.0 and m["env/truncated_frac"] == 0.0 for m in metrics)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert samples and all(row["turns"] == 2 for row in samples)
    # SkyRL's follow-up instruction is in every transcript as the environment's turn (its
    # English text is mostly <unk> to the calculator's char-level tokenizer, so not compared).
    assert all(
        [seg["by"] for seg in row["transcript"]][:3] == ["model", "env", "model"] for row in samples
    )
    assert all(row["turn_rewards"] == [0.0, 0.0] for row in samples)
