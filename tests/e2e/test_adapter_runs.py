"""Third-party environments end to end through `python -m rlhf.train`, unchanged, on the real
packages (the dev extra installs them): a SkyRL-gym environment (`env.id=skyrl_gym:...`) and a
reasoning-gym dataset (`data.task=reasoning_gym:...`), each for a CI-sized 2 steps. These check
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


def test_reasoning_gym_dataset_runs_on_the_tiny_model(tmp_path):
    """reasoning-gym's spell_backward as data.task on the built-in tiny model: its questions
    reach vLLM with their spaces (one token per character: the tiny tokenizer's byte-level
    vocabulary survives the reload as Qwen2Tokenizer) and its score_answer, run by the reward
    actor on the entry rebuilt from the logged index, gives the logged rewards. The tiny model
    (a 10-step warm-up, to keep the build short) does not learn to spell backward in 2 steps,
    so nothing is asserted about the reward rising; it is only asserted to be the dataset's.
    About 50 s here, nearly all of it the run's start-up (Ray, vLLM, DeepSpeed)."""
    import reasoning_gym

    from rlhf.tasks import RG_SEED, RG_SIZE, task_reward

    run_dir = tmp_path / "run"
    proc = train(
        run_dir,
        "data.task=reasoning_gym:spell_backward",
        "eval=off",
        "model.tiny.warmup_steps=10",
        "trainer.total_steps=2",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.max_new_tokens=12",
        "learner.micro_batch_size=8",
        "logger.samples_every=1",
        "logger.wandb.mode=disabled",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert len(metrics) == 2
    assert all(0.0 <= m["reward/mean"] <= 1.0 and m["reward/errors"] == 0 for m in metrics)
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").open()]
    assert len(samples) >= 8
    dataset = reasoning_gym.create_dataset("spell_backward", seed=RG_SEED, size=RG_SIZE)
    score = task_reward("reasoning_gym:spell_backward")  # what the reward actor calls
    for row in samples:
        prompt, answer, fields = row["prompt"], row["answer"], row["fields"]
        entry = dataset[fields["rg_index"]]
        assert prompt == entry["question"] and answer == str(entry["answer"])
        assert " " in prompt and row["prompt_tokens"] == len(prompt)
        assert 0.0 <= row["reward"] <= 1.0
        assert row["reward"] == score(prompt, row["response"], answer, **fields)
        # the reward is the dataset's score_answer: the answer itself scores 1, one far off 0
        assert score(prompt, answer, answer, **fields) == 1.0
        assert score(prompt, "zzz", answer, **fields) == 0.0
