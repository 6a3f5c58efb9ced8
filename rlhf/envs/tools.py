"""Tools: typed Python functions the model may call, their schemas, and the model's calls.

- ``tool_schema(fn)``: the OpenAI-style schema ``{"type": "function", "function": {name,
  description, parameters}}`` from the signature's type hints and the Google-style docstring
  (``Args:`` section), made by ``transformers.utils.get_json_schema`` -- the function that chat
  templates' ``tools=`` argument and TRL use, so the schema is what real chat templates expect.
- ``parse_tool_call(text, tools)``: the model's turn read as a tool call, in one of two forms:
  Hermes/Qwen JSON in tags, ``<tool_call>{"name": "add", "arguments": {"a": 1, "b": 2}}
  </tool_call>`` (what Qwen-style chat templates teach), or a Python-style call taking the whole
  turn, ``add(1, 2)`` / ``add(a=1, b=2)`` (the tiny model's compact form; read with ``ast``, never
  evaluated; arguments must be literals). Returns ``None`` when the text is no call attempt (a
  final answer), a ``ToolCall``, or a ``ToolError`` (malformed, unknown tool).
- ``run_tool(call, tools)``: validates the arguments against the signature (pydantic's
  ``validate_call``: missing, unexpected or wrongly typed arguments are errors) and runs the
  function; returns its result as text or a ``ToolError``. Nothing here raises on the model's
  output: errors become feedback in the transcript and are counted by the environment.
"""

from __future__ import annotations

import ast
import functools
import inspect
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

Tool = Callable[..., Any]

_TAGGED = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_PY_CALL = re.compile(r"^\s*[A-Za-z_]\w*\s*\(")


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class ToolError:
    message: str

    def __str__(self) -> str:
        return f"error: {self.message}"


def tool_schema(fn: Tool) -> dict[str, Any]:
    """The OpenAI-style function schema of a typed, documented function."""
    from transformers.utils import get_json_schema  # light part of transformers; lazy anyway

    return get_json_schema(fn)


def _by_name(tools: Sequence[Tool]) -> dict[str, Tool]:
    return {fn.__name__: fn for fn in tools}


def _known(tools: Sequence[Tool]) -> str:
    return ", ".join(sorted(_by_name(tools))) or "none"


def _parse_tagged(body: str, tools: Sequence[Tool]) -> ToolCall | ToolError:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolError(f"the tool call is not valid JSON ({e.msg})")
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return ToolError('a tool call is {"name": str, "arguments": {...}}')
    args = obj.get("arguments", {})
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return ToolError("the tool call's arguments are not valid JSON")
    if not isinstance(args, dict):
        return ToolError("the tool call's arguments must be an object")
    if obj["name"] not in _by_name(tools):
        return ToolError(f"unknown tool {obj['name']!r}; tools: {_known(tools)}")
    return ToolCall(obj["name"], args)


def _parse_python(text: str, tools: Sequence[Tool]) -> ToolCall | ToolError:
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except (SyntaxError, ValueError):
        return ToolError("malformed tool call")
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
        return ToolError("malformed tool call")
    name = node.func.id
    fn = _by_name(tools).get(name)
    if fn is None:
        return ToolError(f"unknown tool {name!r}; tools: {_known(tools)}")
    try:
        args = [ast.literal_eval(a) for a in node.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg is not None}
    except (ValueError, TypeError, SyntaxError):
        return ToolError(f"{name}: arguments must be literals")
    if any(k.arg is None for k in node.keywords):
        return ToolError(f"{name}: arguments must be literals")
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as e:
        return ToolError(f"{name}: {e}")
    return ToolCall(name, dict(bound.arguments))


def parse_tool_call(text: str, tools: Sequence[Tool]) -> ToolCall | ToolError | None:
    """The model's turn as a tool call; ``None`` when it makes no call attempt."""
    m = _TAGGED.search(text)
    if m:
        return _parse_tagged(m.group(1).strip(), tools)
    if tools and _PY_CALL.match(text):
        return _parse_python(text, tools)
    return None


@functools.lru_cache(maxsize=256)
def _validated(fn: Tool) -> Tool:
    import pydantic

    return pydantic.validate_call(fn)


def run_tool(call: ToolCall, tools: Sequence[Tool]) -> str | ToolError:
    """Validate ``call.arguments`` against the tool's signature and run it: its result as text
    (JSON for dicts and lists), or a ``ToolError`` for bad arguments or a tool that raised."""
    import pydantic

    fn = _by_name(tools).get(call.name)
    if fn is None:
        return ToolError(f"unknown tool {call.name!r}; tools: {_known(tools)}")
    try:
        result = _validated(fn)(**call.arguments)
    except pydantic.ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'arguments'}: {err['msg']}" for err in e.errors()
        )
        return ToolError(f"{call.name}: {problems}")
    except Exception as e:  # the tool's own failure is feedback too
        return ToolError(f"{call.name} failed: {type(e).__name__}: {e}")
    if isinstance(result, (dict, list)):
        return json.dumps(result)
    return str(result)


def tool_reply(action: str, tools: Sequence[Tool]) -> tuple[dict[str, Any] | None, int, int]:
    """What an environment with tools answers to ``action``: (the "tool" message, or None when
    the turn makes no call; tool calls made (0/1); tool errors (0/1))."""
    parsed = parse_tool_call(action, tools)
    if parsed is None:
        return None, 0, 0
    result = run_tool(parsed, tools) if isinstance(parsed, ToolCall) else parsed
    message: dict[str, Any] = {"role": "tool", "content": str(result)}
    if isinstance(parsed, ToolCall):
        message["name"] = parsed.name
    return message, 1, int(isinstance(result, ToolError))
