"""The example environment of docs/environments.md, exactly as written there, played through
reset/step by a scripted policy (tool call, then answer; a bad call counted as a tool error)."""

import json
import re
import sys
from pathlib import Path

from rlhf.envs import make, run_episode, tool_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "environments.md"


def _example_code() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.DOTALL)
    assert len(blocks) == 1, "docs/environments.md should have exactly one python block"
    return blocks[0]


def _policy(messages):
    last = messages[-1]
    if last["role"] == "tool" and not last["content"].startswith("error:"):
        return last["content"]  # answer with the tool's result
    tried = sum(m["role"] == "assistant" for m in messages)
    if tried == 0:
        return 'capital("Atlantis")'  # a call whose tool raises: feedback, then retry
    country = messages[0]["content"].removeprefix("What is the capital of ").rstrip("?")
    call = {"name": "capital", "arguments": {"country": country}}
    return f"Let me look it up.\n<tool_call>{json.dumps(call)}</tool_call>"


def test_doc_example_runs(tmp_path, monkeypatch):
    code = _example_code()
    assert len(code.strip().splitlines()) <= 35  # "about 20 lines" of logic plus the docstring
    (tmp_path / "my_envs.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("my_envs", None)
    env = make("my_envs:capitals")
    assert tool_schema(env.tools[0])["function"]["parameters"]["required"] == ["country"]
    row = {"prompt": "What is the capital of Peru?", "answer": "Lima", "fields": {}}
    ep = run_episode(env, _policy, row, seed=0, max_turns=4)
    assert ep.success and ep.reward == 1.0 and ep.terminated and ep.turns == 3
    assert (ep.tool_calls, ep.tool_errors) == (2, 1)
    roles = [m["role"] for m in ep.messages]
    assert roles == ["user", "assistant", "tool", "assistant", "tool", "assistant"]
    assert "KeyError" in ep.messages[2]["content"] and ep.messages[4]["content"] == "Lima"
    wrong = run_episode(make("capitals"), lambda m: "Cusco", row, seed=0)
    assert not wrong.success and wrong.reward == 0.0 and wrong.turns == 1
