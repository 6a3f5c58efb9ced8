"""The environment interface: registry, make(), the built-in agent tasks' environments and
their scripted experts."""

import random

import pytest

from rlhf import envs
from rlhf.envs import TextEnv, make, register, registered, run_episode
from rlhf.envs.calculator import CalculatorEnv
from rlhf.envs.calculator import expert as calc_expert
from rlhf.envs.guess_number import GuessNumberEnv
from rlhf.envs.guess_number import expert as guess_expert
from rlhf.tasks import get_task


def _row(task_name, rng=0):
    p = get_task(task_name).sample(rng, 1)[0]
    return {"prompt": p.prompt, "answer": p.answer, "fields": {}}


def test_builtins_registered_and_made():
    assert {"calculator", "guess_number"} <= set(registered())
    assert isinstance(make("calculator"), CalculatorEnv)
    g = make("guess_number", max_guesses=2)
    assert isinstance(g, GuessNumberEnv) and g.max_guesses == 2


def test_unknown_id_names_the_known_ones():
    with pytest.raises(KeyError) as err:
        make("nope")
    assert "nope" in str(err.value) and "calculator" in str(err.value)


def test_register_rejects_duplicates_and_bad_entry_points():
    with pytest.raises(ValueError, match="already registered"):
        register("calculator", CalculatorEnv)
    with pytest.raises(ValueError, match="package.module:attr"):
        register("test_bad_entry", "no_colon_here")
    with pytest.raises(ValueError):
        register("a:b", CalculatorEnv)


class _Echo(TextEnv):
    def __init__(self, word="ok"):
        self.word = word

    def step(self, action):
        return [], float(action == self.word), True, False, {"success": action == self.word}


def test_register_a_callable_with_default_kwargs():
    if "test_echo" not in registered():
        register("test_echo", _Echo, word="hi")
    env = make("test_echo")
    assert env.word == "hi" and make("test_echo", word="yo").word == "yo"
    first, info = env.reset({"prompt": "say hi", "answer": ""}, seed=0)
    assert first == [{"role": "user", "content": "say hi"}] and info == {}
    assert env.step("hi")[1:4] == (1.0, True, False)


def test_module_qualified_id_imports_the_module(tmp_path, monkeypatch):
    (tmp_path / "my_envs_mod.py").write_text(
        "from rlhf.envs import TextEnv, register\n"
        "class E(TextEnv):\n"
        "    def step(self, action):\n"
        "        return [], 0.0, True, False, {}\n"
        "register('my_mod_env', E)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    env = make("my_envs_mod:my_mod_env")
    assert type(env).__name__ == "E"
    with pytest.raises(ModuleNotFoundError):
        make("no_such_module_xyz:env")


def test_make_rejects_a_factory_without_step():
    if "test_not_env" not in registered():
        register("test_not_env", lambda: object())
    with pytest.raises(TypeError, match="no reset/step"):
        make("test_not_env")


def test_calculator_tool_then_answer():
    env = make("calculator")
    first, _ = env.reset({"prompt": "47+85=", "answer": "132"}, seed=3)
    assert first == [{"role": "user", "content": "47+85="}]
    msgs, r, term, trunc, info = env.step("add(47,85)")
    assert msgs == [{"role": "tool", "name": "add", "content": "132"}]
    assert (r, term, trunc) == (0.0, False, False)
    assert info == {"tool_calls": 1, "tool_errors": 0}
    msgs, r, term, trunc, info = env.step("132")
    assert (msgs, r, term, trunc) == ([], 1.0, True, False) and info["success"] is True


def test_calculator_wrong_calls_are_feedback_and_wrong_answers_fail():
    env = make("calculator")
    env.reset({"prompt": "47+85=", "answer": "132"}, seed=0)
    for bad in ("mul(47,85)", "add(47)", "add(47,8"):
        msgs, r, term, _, info = env.step(bad)
        assert msgs[0]["role"] == "tool" and msgs[0]["content"].startswith("error:")
        assert (r, term, info["tool_errors"]) == (0.0, False, 1)
    _, r, term, _, info = env.step("131")
    assert (r, term, info["success"]) == (0.0, True, False)


def test_guess_number_feedback_and_limit():
    env = make("guess_number")
    first, _ = env.reset({"prompt": "0-9?", "answer": "7"}, seed=0)
    assert first[0]["content"] == "0-9?"
    assert env.step("4")[0] == [{"role": "user", "content": "higher"}]
    assert env.step("9")[0] == [{"role": "user", "content": "lower"}]
    assert env.step("x")[0] == [{"role": "user", "content": "invalid"}]
    msgs, r, term, _, info = env.step("8")  # the fourth guess, wrong: the game is lost
    assert (msgs, r, term, info["success"]) == ([], 0.0, True, False)
    env.reset({"prompt": "0-9?", "answer": "7"}, seed=0)
    assert env.step("7")[1:3] == (1.0, True)
    with pytest.raises(ValueError):
        env.reset({"prompt": "0-9?", "answer": "12"}, seed=0)


@pytest.mark.parametrize(
    "task_name, policy", [("agent_calculator", calc_expert), ("agent_guess", guess_expert)]
)
def test_experts_always_win_and_replay(task_name, policy):
    task = get_task(task_name)
    assert envs.EXPERTS[task.env] is policy
    turns = []
    for p in task.sample(random.Random(1), 40):
        row = {"prompt": p.prompt, "answer": p.answer}
        ep = run_episode(make(task.env), policy, row, seed=5, max_turns=4)
        again = run_episode(make(task.env), policy, row, seed=5, max_turns=4)
        assert ep.success and ep.terminated and not ep.truncated and ep.reward == 1.0
        assert ep.messages == again.messages
        turns.append(ep.turns)
    if task_name == "agent_calculator":
        assert set(turns) == {2}  # one tool call, one answer
    else:
        assert max(turns) > 1 and min(turns) >= 1  # the feedback is needed


def test_guess_needs_feedback():
    """No fixed sequence of 4 guesses wins every game: the best one wins 4 of 10."""
    env = make("guess_number")

    def wins(seq):
        n = 0
        for secret in range(10):
            env.reset({"prompt": "0-9?", "answer": str(secret)}, 0)
            n += any(env.step(str(g))[1] == 1.0 for g in seq)
        return n

    assert wins([0, 1, 2, 3]) == 4 and wins([4, 4, 4, 4]) == 1


def test_run_episode_truncates_at_max_turns():
    ep = run_episode(
        make("calculator"), lambda m: "add(1,2)", {"prompt": "1+2=", "answer": "3"}, 0, 3
    )
    assert ep.truncated and not ep.terminated and ep.turns == 3 and ep.tool_calls == 3
    assert [m["role"] for m in ep.messages] == ["user"] + ["assistant", "tool"] * 3
