"""scripts/bench_trl.py: the TRL baseline's reward, prompt stream and config mapping match ours.
TRL is only in the `bench` extra (CI does not install it): skipped without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_trl  # noqa: E402

from rlhf.data import PromptSource  # noqa: E402
from rlhf.tasks import get_task, task_reward  # noqa: E402


@pytest.fixture(scope="module")
def cfg():
    return bench_trl.grpo("seed=3")[0]


def test_reward_function_equals_the_task_reward(cfg):
    ours = task_reward(cfg.data.task)
    trl_fn = bench_trl.TaskReward(cfg.data.task)
    problems = get_task(cfg.data.task).sample(0, 20)
    completions = (
        [p.answer for p in problems[:8]]
        + [" " + p.answer + "\n" for p in problems[8:12]]
        + ["", "1", "12", "x", problems[12].answer + "0", "+", "==", "7 "]
    )
    prompts = [p.prompt for p in problems]
    answers = [p.answer for p in problems]
    got = trl_fn(
        completions=completions,
        answer=answers,
        prompts=prompts,
        completion_ids=None,
        trainer_state=None,
    )
    want = [ours(p, c, a) for p, c, a in zip(prompts, completions, answers)]
    assert got == want
    assert set(got) == {0.0, 1.0} and sum(got) >= 12
    assert trl_fn.__name__ == f"{cfg.data.task}_reward"


def test_prompt_stream_is_ours_in_order(cfg):
    rows = bench_trl.prompt_rows(cfg, 3)
    source = PromptSource(cfg.data, cfg.seed)
    want = [p for _ in range(3) for p in source.next(cfg.rollout.prompts_per_step)]
    assert [(r["prompt"], r["answer"]) for r in rows] == [(p["prompt"], p["answer"]) for p in want]
    assert len(rows) == 3 * cfg.rollout.prompts_per_step
    ds = bench_trl.prompt_dataset(cfg, 3)
    assert ds["prompt"] == [r["prompt"] for r in rows] and ds.column_names == ["prompt", "answer"]


def test_config_mapping_sets_the_matched_values(cfg, tmp_path):
    from trl import GRPOConfig

    kw = bench_trl.trl_config_kwargs(cfg, output_dir=str(tmp_path), max_steps=7)
    g = GRPOConfig(**kw)
    r, a = cfg.rollout, cfg.algo
    assert (r.prompts_per_step, r.samples_per_prompt, r.max_new_tokens) == (16, 8, 8)
    assert g.num_generations == 8 and g.per_device_train_batch_size == 128
    assert g.generation_batch_size == 128 and g.steps_per_generation == 1
    assert g.gradient_accumulation_steps == 1 and g.num_iterations == 1
    assert g.max_completion_length == 8 and g.temperature == 1.0 and g.top_p == 1.0
    assert g.top_k == 0  # ours -1: disabled
    assert g.learning_rate == a.lr == 2e-4
    assert g.epsilon == a.clip_low == 0.2 and g.epsilon_high == a.clip_high
    assert g.beta == 0.0 and g.loss_type == "dapo" and g.scale_rewards == "group"
    assert g.optim == "adamw_torch" and g.adam_epsilon == 1e-8 and g.weight_decay == 0.0
    assert (g.adam_beta1, g.adam_beta2) == (0.9, 0.999)
    assert g.max_grad_norm == 1.0
    assert (
        getattr(g.lr_scheduler_type, "value", g.lr_scheduler_type) == "constant"
        and g.warmup_steps == 0
    )
    assert not g.bf16 and not g.fp16 and not g.gradient_checkpointing
    assert g.use_vllm is False and g.shuffle_dataset is False
    assert g.report_to in ([], "none", ["none"]) and g.logging_steps == 1
    assert g.seed == 3 and g.max_steps == 7


def test_config_mapping_follows_overrides_and_refuses_unmatched(tmp_path):
    c, _ = bench_trl.grpo(
        "rollout.max_new_tokens=64", "rollout.prompts_per_step=2", "learner.micro_batch_size=8"
    )
    kw = bench_trl.trl_config_kwargs(c, output_dir=str(tmp_path), max_steps=3)
    assert kw["max_completion_length"] == 64 and kw["per_device_train_batch_size"] == 16
    with pytest.raises(ValueError, match="algo.epochs"):
        bench_trl.trl_config_kwargs(
            bench_trl.grpo("algo.epochs=2")[0], output_dir=str(tmp_path), max_steps=3
        )
    with pytest.raises(ValueError, match="KL"):
        bench_trl.trl_config_kwargs(
            bench_trl.grpo("algo.kl_coef=0.1")[0], output_dir=str(tmp_path), max_steps=3
        )
