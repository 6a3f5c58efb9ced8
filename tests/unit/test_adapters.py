"""Third-party environments unchanged, on the real packages, offline: SkyRL-gym's BaseTextEnv
behind our TextEnv (rlhf/envs/skyrl.py) and reasoning-gym's procedural datasets as a data.task
with their score_answer as the reward (rlhf/tasks.py). A bad id or a missing package is a
ConfigError naming the key, before Ray."""

from __future__ import annotations

import random
import sys

import pytest

from rlhf.config import ConfigError, RootConfig
from rlhf.config.data import DataConfig
from rlhf.data import PromptSource
from rlhf.envs import make, run_episode
from rlhf.rollout.agent_loop import check_env_config
from rlhf.tasks import get_task, task_reward

# ------------------------------------------------------------------------------- SkyRL-gym


def _env_cfg(env_id: str):
    cfg = RootConfig()
    cfg.env.id = env_id
    return cfg.env


def test_skyrl_multi_turn_episode_maps_observations_rewards_done():
    """gsm8k_multi_turn, unchanged: a wrong tentative answer gets SkyRL's per-turn format score
    and its next instruction as our messages; the right one ends the episode (terminated, not
    truncated) with reward 1.0 and success; its metrics come back in info."""
    env = make("skyrl_gym:gsm8k_multi_turn", max_turns=3)
    task = {"prompt": "3+4=", "answer": "7", "fields": {}}
    first, info = env.reset(task, seed=0)
    assert first == [{"role": "user", "content": "3+4="}] and "skyrl_metadata" in info
    messages, reward, terminated, truncated, info = env.step("#### 8")
    assert reward == pytest.approx(0.2 / 3) and not terminated and not truncated
    assert messages and messages[0]["role"] == "user" and "####" in messages[0]["content"]
    assert "success" not in info
    messages, reward, terminated, truncated, info = env.step("so #### 7")
    assert (reward, terminated, truncated, info["success"]) == (1.0, True, False, True)
    assert info["skyrl_metrics"] == {"steps": 2} and messages == []
    env.close()


def test_skyrl_env_through_our_scripted_runner_and_its_turn_limit():
    """The whole episode through rlhf.envs.run_episode; SkyRL's own max_turns ends it (done) when
    the model never answers, the episode return is the sum of SkyRL's turn rewards."""
    env = make("skyrl_gym:gsm8k_multi_turn", max_turns=2)
    ep = run_episode(env, lambda m: "no idea", {"prompt": "1+1=", "answer": "2"}, 0, max_turns=8)
    assert (ep.turns, ep.terminated, ep.truncated, ep.success, ep.reward) == (
        2,
        True,
        False,
        False,
        0.0,
    )
    single = make("skyrl_gym:gsm8k")
    ep = run_episode(single, lambda m: "#### 2", {"prompt": "1+1=", "answer": "2"}, 0)
    assert (ep.turns, ep.reward, ep.success) == (1, 1.0, True)


def test_skyrl_row_fields_and_adapter_kwargs_reach_the_env():
    """A SkyRL-style row (its own reward_spec) is passed as extras unchanged; env.kwargs win."""
    env = make("skyrl_gym:gsm8k_multi_turn", max_turns=1)
    row = {"reward_spec": {"method": "rule", "ground_truth": "42"}, "extra_info": {"x": 1}}
    env.reset({"prompt": "q", "answer": "ignored", "fields": row}, seed=3)
    assert env.env.ground_truth == "42" and env.env.max_turns == 1
    _, reward, terminated, _, _ = env.step("#### 42")
    assert reward == 1.0 and terminated


def test_skyrl_bad_id_and_missing_package_are_config_errors(monkeypatch):
    check_env_config(_env_cfg("skyrl_gym:gsm8k"))
    with pytest.raises(ConfigError) as e:
        check_env_config(_env_cfg("skyrl_gym:gsm9k"))
    assert e.value.key == "env.id" and "gsm8k_multi_turn" in str(e.value)
    monkeypatch.setitem(sys.modules, "skyrl_gym", None)  # as if not installed
    with pytest.raises(ConfigError) as e:
        check_env_config(_env_cfg("skyrl_gym:gsm8k"))
    assert e.value.key == "env.id" and "rlhf[skyrl]" in str(e.value)


# ---------------------------------------------------------------------------- reasoning-gym

RG = "reasoning_gym:spell_backward"


def test_reasoning_gym_task_draws_seeded_entries_and_scores_with_score_answer():
    task = get_task(RG)
    a, b = task.sample(random.Random(5), 4), task.sample(random.Random(5), 4)
    key = [(p.prompt, p.answer, p.fields) for p in a]
    assert key == [(p.prompt, p.answer, p.fields) for p in b]
    p = a[0]
    assert "backward" in p.prompt and isinstance(p.fields["rg_index"], int)
    score = task_reward(RG)  # what the reward actor calls: fields arrive as keyword arguments
    assert score(p.prompt, f" {p.answer}\n", p.answer, **p.fields) == 1.0
    assert score(p.prompt, "zzz", p.answer, **p.fields) == 0.0
    # The entry is rebuilt from its index alone (another process, same entry).
    import reasoning_gym

    entry = reasoning_gym.create_dataset("spell_backward", seed=0, size=1_000_000)[
        p.fields["rg_index"]
    ]
    assert (entry["question"], str(entry["answer"])) == (p.prompt, p.answer)
    assert set(p.prompt + p.answer) <= set(task.alphabet)


def test_reasoning_gym_prompt_source_hands_the_index_to_the_reward():
    source = PromptSource(DataConfig(task=RG), seed=1)
    rows = source.next(3)
    assert all(r["fields"].keys() == {"rg_index"} for r in rows)
    assert [r["group_id"] for r in rows] == [0, 1, 2]


def test_reasoning_gym_bad_name_and_missing_package_are_config_errors(monkeypatch):
    DataConfig(task=RG).check()
    with pytest.raises(ConfigError) as e:
        DataConfig(task="reasoning_gym:spell_forward").check()
    assert e.value.key == "data.task" and "spell_backward" in str(e.value)
    with pytest.raises(ConfigError) as e:
        DataConfig(task="additon").check()
    assert e.value.key == "data.task" and "addition" in str(e.value)
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)
    with pytest.raises(ConfigError) as e:
        DataConfig(task="reasoning_gym:leg_counting").check()
    assert e.value.key == "data.task" and "rlhf[reasoning_gym]" in str(e.value)


def test_tiny_tokenizer_reloads_every_reasoning_gym_char_and_prompt(tmp_path):
    """Saved next to a qwen2 config, the tiny tokenizer reloads (as vLLM and the learner load
    it) as transformers' Qwen2Tokenizer, which byte-encodes text: spaces and newlines must still
    round-trip with the char-level ids (they were dropped before the vocabulary used byte-level
    names), and a real reasoning-gym prompt must come back exactly."""
    from transformers import AutoTokenizer

    from rlhf.models.tiny import _make_config, build_tokenizer, check_saved_tokenizer
    from rlhf.tasks import RG_ALPHABET

    ours = build_tokenizer(RG_ALPHABET)
    ours.save_pretrained(tmp_path)
    _make_config(ours, 128, 2, 2, 64, 512).save_pretrained(tmp_path)
    theirs = AutoTokenizer.from_pretrained(tmp_path)
    assert type(theirs).__name__ == "Qwen2Tokenizer"  # the reload that used to drop spaces
    for ch in RG_ALPHABET:
        ids = theirs.encode(ch, add_special_tokens=False)
        assert ids == ours.encode(ch, add_special_tokens=False) and len(ids) == 1, repr(ch)
        assert ids[0] != ours.unk_token_id and theirs.decode(ids) == ch, repr(ch)
    for p in get_task(RG).sample(random.Random(0), 16):
        for s in (p.prompt, f"{p.prompt}\n{p.answer} ok"):
            ids = theirs.encode(s, add_special_tokens=False)
            assert ids == ours.encode(s, add_special_tokens=False) and len(ids) == len(s)
            assert theirs.decode(ids) == s
    assert " " in p.prompt
    check_saved_tokenizer(tmp_path, get_task(RG))  # what build_tiny_model runs before saving
