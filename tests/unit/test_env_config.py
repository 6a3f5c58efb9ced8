"""env.*: its own rules, the episode budget against the engine's context, the registry check
before Ray, and the two agent experiments composing into valid configs."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir

from rlhf.config import ConfigError, RootConfig, register_configs, to_schema, validate
from rlhf.rollout.agent_loop import check_env_config
from rlhf.train import CONF_DIR


def _agent(**env) -> RootConfig:
    cfg = RootConfig()
    cfg.env.id, cfg.data.task, cfg.eval.every = "calculator", "agent_calculator", 0
    for k, v in env.items():
        setattr(cfg.env, k, v)
    return cfg


@pytest.mark.parametrize(
    "env, key",
    [
        ({"max_turns": 0}, "env.max_turns"),
        ({"max_tokens_per_turn": 0}, "env.max_tokens_per_turn"),
        ({"step_timeout_s": 0.0}, "env.step_timeout_s"),
        ({"isolation": "docker"}, "env.isolation"),
        ({"max_episode_tokens": 4096}, "env.max_episode_tokens"),
        ({"max_tokens_per_turn": 128}, "env.max_tokens_per_turn"),
    ],
)
def test_bad_limits_name_the_key(env, key):
    with pytest.raises(ConfigError) as e:
        validate(_agent(**env))
    assert e.value.key == key


def test_eval_needs_to_be_off_for_agents():
    cfg = _agent()
    cfg.eval.every = 10
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key == "eval.every"


def test_single_turn_ignores_env_limits():
    cfg = RootConfig()
    cfg.env.max_turns = 0  # no env.id: single-turn prompts, the limits are not used
    validate(cfg)


def test_unknown_env_id_names_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        check_env_config(_agent(id="calculater").env)
    assert (
        e.value.key == "env.id" and "calculator" in str(e.value) and "guess_number" in str(e.value)
    )
    with pytest.raises(ConfigError) as e:
        check_env_config(_agent(id="no_such_module:x").env)
    assert e.value.key == "env.id"
    check_env_config(_agent().env)


@pytest.mark.parametrize(
    "name, env_id", [("agent_tool", "calculator"), ("agent_feedback", "guess_number")]
)
def test_agent_experiments_compose(name, env_id):
    register_configs()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = validate(to_schema(compose("config", overrides=[f"+experiment={name}"])))
    assert cfg.env.id == env_id and cfg.data.task.startswith("agent_") and cfg.eval.every == 0
    check_env_config(cfg.env)
