"""``calculator``: a tool task. The prompt is a sum of two numbers too large for the tiny model
to add by itself (``"47+85="``); the environment offers one tool, ``add``. The model calls it
(``add(47,85)``), reads the result (a "tool" message) and answers with it (``132``). A turn
that is not a tool call is the final answer: reward 1.0 when it equals the sum, else 0.0, and
the episode ends. Wrong calls (unknown tool, bad arguments, malformed) get the error as the
tool's reply and are counted in ``info["tool_errors"]``.
"""

from __future__ import annotations

from typing import Any

from rlhf.envs.base import Message, StepResult, TextEnv
from rlhf.envs.tools import tool_reply
from rlhf.tasks import exact_match


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


class CalculatorEnv(TextEnv):
    tools = (add,)

    def reset(self, task: dict[str, Any], seed: int) -> tuple[list[Message], dict[str, Any]]:
        self.answer = str(task["answer"])
        return [{"role": "user", "content": task["prompt"]}], {}

    def step(self, action: str) -> StepResult:
        reply, calls, errors = tool_reply(action, self.tools)
        if reply is not None:
            return [reply], 0.0, False, False, {"tool_calls": calls, "tool_errors": errors}
        success = exact_match(action, self.answer) == 1.0
        return [], float(success), True, False, {"success": success}


def expert(messages: list[Message]) -> str:
    """The scripted expert: call ``add`` on the prompt's operands, then answer with the result."""
    last = messages[-1]
    if last["role"] == "tool":
        return last["content"]
    a, b = last["content"].rstrip("=").split("+")
    return f"add({int(a)},{int(b)})"
