"""Reward config: every kind and component validates before Ray, and bad values name the key."""

import pytest

from rlhf.compose import compose
from rlhf.config import ConfigError, validate
from rlhf.preflight import preflight


def load(*overrides):
    return compose("+experiment=grpo", *overrides, check=False)[0]


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    from rlhf.reward.model import build_tiny_reward_model

    return build_tiny_reward_model(tmp_path_factory.mktemp("rm") / "rm")


def test_presets_validate(rm_path):
    validate(load("reward=math", "data.task=fractions"))
    validate(load("reward=composed", "data.task=fractions"))
    validate(load("reward=model", f"reward.model.path={rm_path}"))
    validate(load("reward=sandbox"))
    validate(load("reward=remote", "reward.remote.url=http://127.0.0.1:8000/score"))
    validate(load("reward=judge", f"reward.judge.path={rm_path}"))


def test_components_from_the_command_line():
    cfg = validate(
        load(
            "data.task=fractions",
            "reward.components=[{kind: math}, {fn: 'rlhf.reward.rules:boxed_format', "
            "name: format, weight: 0.1}]",
        )
    )
    assert [(c.kind, c.name, c.weight) for c in cfg.reward.components] == [
        ("math", "", 1.0),
        ("fn", "format", 0.1),
    ]


BAD = [
    (["reward.kind=oracle"], "reward.kind"),
    (["reward.workers=0"], "reward.workers"),
    (["reward.gpus_per_actor=-1"], "reward.gpus_per_actor"),
    (["reward.gpus_per_actor=1"], "reward.gpus_per_actor"),  # no GPU here
    (["reward.kind=model"], "reward.model.path"),
    (["reward.kind=model", "reward.model.path=/nonexistent"], "reward.model.path"),
    (["reward.kind=remote"], "reward.remote.url"),
    (["reward.kind=remote", "reward.remote.url=ftp://x"], "reward.remote.url"),
    (
        [
            "reward.kind=remote",
            "reward.remote.url=http://127.0.0.1:1",
            "reward.remote.max_concurrency=0",
        ],
        "reward.remote.max_concurrency",
    ),
    (
        [
            "reward.kind=remote",
            "reward.remote.url=http://127.0.0.1:1",
            "reward.remote.api_key_env=RLHF_NO_SUCH_VARIABLE",
        ],
        "reward.remote.api_key_env",
    ),
    (["reward.kind=sandbox", "reward.sandbox.timeout_s=0"], "reward.sandbox.timeout_s"),
    (["reward.kind=sandbox", "reward.sandbox.python=/no/python"], "reward.sandbox.python"),
    (["reward.components=[{kind: oracle}]"], "reward.components[0].kind"),
    (["reward.components=[{fn: 'no_such_module:f'}]"], "reward.components[0].fn"),
    (["reward.components=[{kind: math}, {kind: math}]"], "reward.components[1].name"),
    (["reward.components=[{kind: math, name: mean}]"], "reward.components[0].name"),
    (["reward.components=[{kind: math, weight: nan}]"], "reward.components[0].weight"),
    (["reward.components=[{kind: model}]"], "reward.model.path"),
    (["reward.kind=judge"], "reward.judge.path"),
    (
        ["reward.kind=judge", "reward.judge.path=RM", "reward.judge.template=no_response_field"],
        "reward.judge.template",
    ),
    (
        ["reward.kind=judge", "reward.judge.path=RM", "reward.judge.template='{response} {oops}'"],
        "reward.judge.template",
    ),
    (
        ["reward.kind=judge", "reward.judge.path=RM", r"reward.judge.score_pattern='\\d+'"],
        "reward.judge.score_pattern",
    ),
    (
        ["reward.kind=judge", "reward.judge.path=RM", "reward.judge.score_pattern='(['"],
        "reward.judge.score_pattern",
    ),
]


@pytest.mark.parametrize("overrides, key", BAD)
def test_bad_reward_config_names_the_key(overrides, key, rm_path):
    overrides = [o.replace("=RM", f"={rm_path}") for o in overrides]
    with pytest.raises(ConfigError) as e:
        preflight(load(*overrides))  # validate, then the machine's checks (GPUs)
    assert e.value.key == key, str(e.value)
