"""Text environments for agents: the interface and registry (base.py), tools (tools.py),
rendering messages to tokens (render.py) and the built-in agent tasks' environments."""

from rlhf.envs import calculator, guess_number, skyrl
from rlhf.envs.base import (
    EnvSpec,
    Episode,
    Message,
    StepResult,
    TextEnv,
    make,
    register,
    register_prefix,
    registered,
    run_episode,
    spec,
)
from rlhf.envs.tools import ToolCall, ToolError, parse_tool_call, run_tool, tool_reply, tool_schema

register("calculator", calculator.CalculatorEnv)
register("guess_number", guess_number.GuessNumberEnv)
# env.id=skyrl_gym:<id>: SkyRL-gym's own environments, unchanged (the skyrl extra).
register_prefix(skyrl.PREFIX, skyrl.spec_for)

# The scripted expert of each built-in environment (its demonstrations warm the tiny model up).
EXPERTS = {"calculator": calculator.expert, "guess_number": guess_number.expert}

__all__ = [
    "EXPERTS",
    "EnvSpec",
    "Episode",
    "Message",
    "StepResult",
    "TextEnv",
    "ToolCall",
    "ToolError",
    "make",
    "parse_tool_call",
    "register",
    "register_prefix",
    "registered",
    "run_episode",
    "run_tool",
    "spec",
    "tool_reply",
    "tool_schema",
]
