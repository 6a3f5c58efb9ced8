"""Tools: schemas from typed functions, parsing the model's calls, errors as values."""

import pytest

from rlhf.envs.tools import ToolCall, ToolError, parse_tool_call, run_tool, tool_reply, tool_schema


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def divide(x: float, y: float = 1.0) -> float:
    """Divide x by y.

    Args:
        x: The dividend.
        y: The divisor.
    """
    return x / y


def lookup(key: str) -> dict:
    """Look a key up.

    Args:
        key: What to look up.
    """
    return {"key": key, "value": len(key)}


TOOLS = (add, divide, lookup)


def test_schema_is_openai_style_from_signature_and_docstring():
    s = tool_schema(add)
    assert s["type"] == "function"
    f = s["function"]
    assert f["name"] == "add" and f["description"] == "Add two integers."
    assert f["parameters"]["type"] == "object"
    assert f["parameters"]["properties"]["a"] == {
        "type": "integer",
        "description": "The first number.",
    }
    assert f["parameters"]["required"] == ["a", "b"]
    d = tool_schema(divide)["function"]["parameters"]
    assert d["properties"]["y"]["type"] == "number" and d["required"] == ["x"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("add(47,85)", ToolCall("add", {"a": 47, "b": 85})),
        (" add(a=1, b=2) ", ToolCall("add", {"a": 1, "b": 2})),
        ("divide(3)", ToolCall("divide", {"x": 3})),
        ('lookup("k")', ToolCall("lookup", {"key": "k"})),
        (
            'Let me add.\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
            "</tool_call>",
            ToolCall("add", {"a": 1, "b": 2}),
        ),
        (  # arguments as a JSON string, and an unclosed tag at the end of the turn
            '<tool_call>{"name": "add", "arguments": "{\\"a\\": 5, \\"b\\": 6}"}',
            ToolCall("add", {"a": 5, "b": 6}),
        ),
    ],
)
def test_parse_tool_call_forms(text, expected):
    assert parse_tool_call(text, TOOLS) == expected


@pytest.mark.parametrize("text", ["132", "the answer is 7", "", "(1, 2)", "x = add"])
def test_no_call_attempt_is_none(text):
    assert parse_tool_call(text, TOOLS) is None


def test_python_form_needs_tools():
    assert parse_tool_call("add(1,2)", ()) is None


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("add(47,85", "malformed"),
        ("mul(2,3)", "unknown tool 'mul'"),
        ("add(1,2,3)", "add: too many positional arguments"),
        ("add(a=1, c=2)", "add:"),
        ("add(__import__('os'))", "literals"),
        ("add(*xs)", "literals"),
        ("add(**kw)", "literals"),
        ("add(1)(2)", "malformed"),
        ("<tool_call>{not json}</tool_call>", "not valid JSON"),
        ('<tool_call>{"name": "nope", "arguments": {}}</tool_call>', "unknown tool 'nope'"),
        ('<tool_call>["add"]</tool_call>', '"name"'),
        ('<tool_call>{"name": "add", "arguments": [1]}</tool_call>', "must be an object"),
    ],
)
def test_malformed_calls_are_errors_not_exceptions(text, fragment):
    out = parse_tool_call(text, TOOLS)
    assert isinstance(out, ToolError)
    assert fragment in out.message


def test_run_tool_validates_and_runs():
    assert run_tool(ToolCall("add", {"a": 2, "b": 3}), TOOLS) == "5"
    assert run_tool(ToolCall("divide", {"x": 1}), TOOLS) == "1.0"
    assert run_tool(ToolCall("lookup", {"key": "ab"}), TOOLS) == '{"key": "ab", "value": 2}'
    bad = run_tool(ToolCall("add", {"a": "two", "b": 3}), TOOLS)
    assert isinstance(bad, ToolError) and "add: a:" in bad.message
    missing = run_tool(ToolCall("add", {"a": 1}), TOOLS)
    assert isinstance(missing, ToolError) and "b" in missing.message
    extra = run_tool(ToolCall("add", {"a": 1, "b": 2, "c": 3}), TOOLS)
    assert isinstance(extra, ToolError)
    raised = run_tool(ToolCall("divide", {"x": 1, "y": 0}), TOOLS)
    assert isinstance(raised, ToolError) and "ZeroDivisionError" in raised.message
    assert isinstance(run_tool(ToolCall("nope", {}), TOOLS), ToolError)


def test_tool_reply_counts():
    assert tool_reply("12", TOOLS) == (None, 0, 0)
    msg, calls, errors = tool_reply("add(1,2)", TOOLS)
    assert msg == {"role": "tool", "name": "add", "content": "3"} and (calls, errors) == (1, 0)
    msg, calls, errors = tool_reply("add(1,x)", TOOLS)
    assert msg["role"] == "tool" and msg["content"].startswith("error:")
    assert (calls, errors) == (1, 1)
