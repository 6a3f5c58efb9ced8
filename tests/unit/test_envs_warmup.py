"""The tiny model's warm-up on the agent tasks: the scripted expert's demonstrations, laid out
as the agent loop lays out an episode, bring the sampled episode success rate to a low but
non-zero start (the warm-up check: about 5 s per task)."""

import json

import pytest
import torch

from rlhf.envs.render import ChatRenderer
from rlhf.models import tiny
from rlhf.tasks import get_task


def test_single_turn_cache_keys_do_not_depend_on_the_agent_format(monkeypatch):
    task = get_task("addition")
    params = {"task": "addition", "seed": 0}
    before = tiny._cache_key(params, task)
    monkeypatch.setattr(tiny, "AGENT_FORMAT_VERSION", "something-else")
    assert tiny._cache_key(params, task) == before


def test_demonstration_layout_and_labels():
    task = get_task("agent_calculator")
    tok = tiny.build_tokenizer(task.alphabet, chat_template=tiny.AGENT_CHAT_TEMPLATE)
    renderer = ChatRenderer(tok)
    (demo,) = tiny.demonstrations(task, [task.sample(0, 1)[0]], seed=0)
    ids, labels = tiny.demonstration_ids(renderer, demo, [])
    a, b = demo[0]["content"].rstrip("=").split("+")
    total = str(int(a) + int(b))
    assert tok.decode(ids) == f"{a}+{b}=add({a},{b})<eos>[{total}]{total}<eos>"
    assert tok.decode([t for t in labels if t != -100]) == f"add({a},{b})<eos>{total}<eos>"
    assert len(ids) == len(labels)


@pytest.mark.parametrize("task_name", ["agent_calculator", "agent_guess"])
def test_agent_warmup_starts_low_but_not_at_zero(task_name):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    # Into the shared cache, with the agent experiments' parameters: on a fresh machine this
    # is the build that the agent e2e and fault runs then find there (one build, not two).
    path = tiny.build_tiny_model(task=task_name)
    meta = json.loads((path / "rlhf_tiny.json").read_text())
    assert meta["agent_format"] == tiny.AGENT_FORMAT_VERSION
    assert 0.1 <= meta["warmup_sampled_success"] <= 0.35, meta
    assert meta["warmup_steps_taken"] < meta["warmup_steps"]  # stopped by the target
    # The folder loads as vLLM loads it, with the agent template, and plays episodes.
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.chat_template == tiny.AGENT_CHAT_TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    task = get_task(task_name)
    rows = tiny.agent_eval_rows(task, 32)
    eps = tiny.sample_episodes(
        model, ChatRenderer(tok), task.env, rows, list(range(32)), torch.Generator().manual_seed(0)
    )
    assert all(len(e["ids"]) == len(e["mask"]) for e in eps)
    assert all(0 < sum(e["mask"]) < len(e["ids"]) - e["prompt_len"] + 1 for e in eps)
    assert any(e["turns"] > 1 for e in eps)
    # Mask 0 after the prompt is exactly the environment's part: tool results / feedback.
    env_text = "".join(
        tok.decode(
            [t for t, m in zip(e["ids"][e["prompt_len"] :], e["mask"][e["prompt_len"] :]) if not m]
        )
        for e in eps
    )
    assert set(env_text) <= set(task.alphabet) | set("<eos>")
    assert ("[" in env_text) if task_name == "agent_calculator" else ("er" in env_text)
