"""The trusted half of the code sandbox: what to run, and whether the results pass.

A sample's tests never enter the sandbox whole. `parse_tests` turns them into a plan:

- Assert-style tests (a string of Python, or a list of lines; `assert solve(2) == 4`): each
  `assert` is split with `ast` into the expressions the program must evaluate (`solve(2)`: the
  "calls", sent to the sandbox) and everything else (the literal `4`, the `==`, `not`,
  `math.isclose`, ...), which stays here. Other top-level statements (imports, helper
  assignments) are setup, run in the sandbox in order. Expected values are never sent.
- Stdin/stdout tests (a list of `{"input": ..., "output": ...}`, or `{"inputs": [...],
  "outputs": [...]}`, or either as a JSON string): only the inputs are sent.

`judge` compares what came back with the expected values here, type-exactly (`4.0` is not `4`,
`True` is not `1`). Results arrive as tagged JSON of builtin types only (`decode`); anything else
is a bad result. Nothing the program prints or fakes can do more than claim return values.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from typing import Any

# Builtins the parent may apply to literals when computing an expected value (`set((4, 5))`).
# They run on builtin values only, so no program code can run here.
_SAFE_CALLS = {
    "set": set,
    "frozenset": frozenset,
    "tuple": tuple,
    "list": list,
    "sorted": sorted,
    "abs": abs,
    "round": round,
    "float": float,
    "int": int,
    "str": str,
    "bool": bool,
    "len": len,
    "min": min,
    "max": max,
    "sum": sum,
}
_MATH_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau, "inf": math.inf, "nan": math.nan}
_ARITH = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
    ast.FloorDiv: lambda a, b: a // b,
    ast.Mod: lambda a, b: a % b,
}
MAX_TESTS_CHARS = 1 << 20


class TestFormatError(ValueError):
    """The sample's tests cannot be scored (the message names the line)."""


# -- the plan -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    index: int  # position of this call's result


@dataclass(frozen=True)
class Const:
    value: Any


@dataclass(frozen=True)
class Op:
    kind: str  # compare | not | and | or | isclose
    args: tuple  # nodes (Leaf | Const | Op)
    ops: tuple = ()  # compare: the operator names
    kw: tuple = ()  # isclose: (rel_tol, abs_tol)


@dataclass(frozen=True)
class Check:
    line: int
    node: Leaf | Const | Op


@dataclass(frozen=True)
class CallTests:
    """Steps for the sandbox, in order: ("exec", source) for setup, ("eval", source) for a
    call whose value comes back; checks are judged here."""

    steps: tuple[tuple[str, str], ...]
    checks: tuple[Check, ...]

    @property
    def n_calls(self) -> int:
        return sum(kind == "eval" for kind, _ in self.steps)


@dataclass(frozen=True)
class IOTests:
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def parse_tests(tests: Any) -> CallTests | IOTests:
    """A row's `tests` value -> the plan. Raises TestFormatError naming the problem."""
    if isinstance(tests, str) and tests.lstrip()[:1] in ("[", "{"):
        try:
            tests = json.loads(tests)
        except ValueError:
            pass  # Python code that starts with a bracket
    if isinstance(tests, dict):
        if set(tests) >= {"inputs", "outputs"}:
            return _io(list(zip(tests["inputs"], tests["outputs"], strict=True)))
        raise TestFormatError("a dict of tests needs 'inputs' and 'outputs' lists")
    if isinstance(tests, (list, tuple)) and tests and all(isinstance(t, dict) for t in tests):
        try:
            return _io([(t["input"], t["output"]) for t in tests])
        except KeyError as e:
            raise TestFormatError(f"a stdin/stdout test lacks {e.args[0]!r}") from None
    if isinstance(tests, (list, tuple)):
        tests = "\n".join(map(str, tests))
    if not isinstance(tests, str):
        raise TestFormatError(f"tests must be code, a list of lines or cases, not {type(tests)}")
    return _calls(tests)


def _io(cases: list[tuple[Any, Any]]) -> IOTests:
    if not cases:
        raise TestFormatError("no stdin/stdout cases")
    for i, (a, b) in enumerate(cases):
        if not isinstance(a, str) or not isinstance(b, str):
            raise TestFormatError(f"stdin/stdout case {i}: input and output must be strings")
    return IOTests(tuple(a for a, _ in cases), tuple(b for _, b in cases))


def _calls(source: str) -> CallTests:
    if len(source) > MAX_TESTS_CHARS:
        raise TestFormatError(f"tests are longer than {MAX_TESTS_CHARS} characters")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise TestFormatError(f"tests line {e.lineno}: {e.msg}") from None
    steps: list[tuple[str, str]] = []
    checks: list[Check] = []
    env: dict[str, Any] = {}  # setup names bound to parent-computable constants
    shadowed: set[str] = set()  # names the setup binds otherwise
    math_isclose = False
    for stmt in tree.body:
        if isinstance(stmt, ast.Assert):
            splitter = _Splitter(env, shadowed, len(steps), math_isclose)
            node = splitter.split(stmt.test)
            steps.extend(("eval", src) for src in splitter.calls)
            checks.append(Check(stmt.lineno, node))
            continue
        steps.append(("exec", ast.unparse(stmt)))
        bound = _bound_names(stmt)
        if "isclose" in bound:
            math_isclose = isinstance(stmt, ast.ImportFrom) and stmt.module == "math"
        for name in bound:
            env.pop(name, None)
            shadowed.add(name)
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            try:
                value = _Splitter(env, shadowed, 0).constant(stmt.value)
            except _NotConstant:
                continue
            for t in stmt.targets:
                env[t.id] = value
                shadowed.discard(t.id)
    if not checks:
        raise TestFormatError("tests contain no assert")
    return CallTests(tuple(steps), tuple(checks))


def _bound_names(stmt: ast.stmt) -> set[str]:
    names = set()
    for n in ast.walk(stmt):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(n.name)
        elif isinstance(n, ast.alias):
            names.add((n.asname or n.name).split(".")[0])
    return names


class _NotConstant(Exception):
    pass


class _Splitter:
    """One assert's expression -> a tree whose leaves are calls for the sandbox."""

    def __init__(
        self, env: dict[str, Any], shadowed: set[str], first_index: int, math_isclose=False
    ):
        self.env, self.shadowed = env, shadowed
        self.math_isclose = math_isclose  # `from math import isclose` ran in the setup
        self.first = first_index
        self.calls: list[str] = []

    def split(self, node: ast.expr) -> Leaf | Const | Op:
        try:
            return Const(self.constant(node))
        except _NotConstant:
            pass
        if isinstance(node, ast.Compare):
            args = (self.split(node.left), *map(self.split, node.comparators))
            return Op("compare", args, tuple(type(o).__name__ for o in node.ops))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return Op("not", (self.split(node.operand),))
        if isinstance(node, ast.BoolOp):
            kind = "and" if isinstance(node.op, ast.And) else "or"
            return Op(kind, tuple(map(self.split, node.values)))
        if self._is_isclose(node.func if isinstance(node, ast.Call) else None):
            kw = {k.arg: self.constant(k.value) for k in node.keywords}
            if len(node.args) != 2 or set(kw) - {"rel_tol", "abs_tol"}:
                raise TestFormatError(f"isclose takes two values, rel_tol and abs_tol: {node}")
            return Op(
                "isclose",
                tuple(map(self.split, node.args)),
                kw=(kw.get("rel_tol", 1e-9), kw.get("abs_tol", 0.0)),
            )
        self.calls.append(ast.unparse(node))
        return Leaf(self.first + len(self.calls) - 1)

    def _is_isclose(self, func: ast.expr | None) -> bool:
        if isinstance(func, ast.Attribute):
            return (
                func.attr == "isclose"
                and isinstance(func.value, ast.Name)
                and func.value.id == "math"
                and "math" not in self.env
            )
        return isinstance(func, ast.Name) and func.id == "isclose" and self.math_isclose

    def constant(self, node: ast.expr) -> Any:
        """The value of `node` when it is computable here from literals, else _NotConstant."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = [self.constant(e) for e in node.elts]
            kind = {ast.List: list, ast.Tuple: tuple, ast.Set: set}[type(node)]
            try:
                return kind(items)
            except TypeError:
                raise _NotConstant from None
        if isinstance(node, ast.Dict) and None not in node.keys:
            try:
                return {self.constant(k): self.constant(v) for k, v in zip(node.keys, node.values)}
            except TypeError:
                raise _NotConstant from None
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            v = self.constant(node.operand)
            if _is_num(v):
                return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _ARITH:
            a, b = self.constant(node.left), self.constant(node.right)
            if _is_num(a) and _is_num(b):
                try:
                    return _ARITH[type(node.op)](a, b)
                except ArithmeticError:
                    raise _NotConstant from None
        if isinstance(node, ast.Name):
            if node.id in self.env:
                return self.env[node.id]
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "math"
            and "math" not in self.env
            and node.attr in _MATH_CONSTANTS
        ):
            return _MATH_CONSTANTS[node.attr]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _SAFE_CALLS
            and node.func.id not in self.shadowed
            and node.func.id not in self.env
        ):
            args = [self.constant(a) for a in node.args]
            kwargs = {k.arg: self.constant(k.value) for k in node.keywords if k.arg}
            if len(kwargs) != len(node.keywords) or any(_too_big(a) for a in args):
                raise _NotConstant
            try:
                return _SAFE_CALLS[node.func.id](*args, **kwargs)
            except (TypeError, ValueError, OverflowError):
                raise _NotConstant from None
        raise _NotConstant


def _is_num(v: Any) -> bool:
    return type(v) in (int, float, complex)


def _too_big(v: Any) -> bool:
    return isinstance(v, (str, bytes, list, tuple, set, frozenset, dict)) and len(v) > 100_000


# -- results --------------------------------------------------------------------------------
class BadResult(ValueError):
    """A result line that is not tagged JSON of builtin types."""


def decode(obj: Any, depth: int = 0) -> Any:
    """Tagged JSON -> the builtin value (the harness's `encode` in reverse). Strict: anything
    else raises BadResult."""
    if depth > 200:
        raise BadResult("nested too deeply")
    if obj is None or type(obj) in (bool, str):
        return obj
    if type(obj) is list:
        return [decode(v, depth + 1) for v in obj]
    if type(obj) is not dict or len(obj) != 1:
        raise BadResult(f"not a tagged value: {str(obj)[:80]}")
    [(tag, v)] = obj.items()
    try:
        if tag == "i" and type(v) is str:
            return int(v)
        if tag == "f" and type(v) is str:
            return float(v)
        if tag == "c" and type(v) is list and len(v) == 2:
            return complex(float(v[0]), float(v[1]))
        if tag == "b" and type(v) is str:
            return bytes.fromhex(v)
        if tag in ("t", "s", "fs") and type(v) is list:
            items = [decode(x, depth + 1) for x in v]
            return {"t": tuple, "s": set, "fs": frozenset}[tag](items)
        if tag == "d" and type(v) is list:
            return {decode(k, depth + 1): decode(x, depth + 1) for k, x in v}
    except (TypeError, ValueError):
        raise BadResult(f"malformed {tag!r} value") from None
    raise BadResult(f"unknown tag {tag!r}")


def same(a: Any, b: Any) -> bool:
    """Equality that also requires equal types all the way down (so 1 != True != 1.0)."""
    if type(a) is not type(b):
        return False
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        if len(a) != len(b):
            return False
        tb = {_typed(k): v for k, v in b.items()}
        return all(_typed(k) in tb and same(v, tb[_typed(k)]) for k, v in a.items())
    if type(a) in (set, frozenset):
        return {_typed(x) for x in a} == {_typed(x) for x in b}
    return a == b


def _typed(v: Any) -> Any:
    """A hashable key that tells 1, True and 1.0 apart."""
    if type(v) is tuple:
        return ("tuple", tuple(_typed(x) for x in v))
    if type(v) is frozenset:
        return ("frozenset", frozenset(_typed(x) for x in v))
    return (type(v).__name__, v)


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "Eq":
        return same(a, b)
    if op == "NotEq":
        return not same(a, b)
    if op == "Is":
        return a is b if b in (None, True, False) or a in (None, True, False) else same(a, b)
    if op == "IsNot":
        return not _compare("Is", a, b)
    if op in ("In", "NotIn"):
        if type(b) in (list, tuple, set, frozenset, dict):
            found = any(same(a, x) for x in b)
        elif type(a) is type(b) and type(b) in (str, bytes):
            found = a in b
        else:
            raise TypeError("unsupported 'in'")
        return found if op == "In" else not found
    if not (_is_num(a) and _is_num(b)) and type(a) is not type(b):
        raise TypeError("ordering different types")
    return {"Lt": a < b, "LtE": a <= b, "Gt": a > b, "GtE": a >= b}[op]


_MISSING = object()


def _value(node, results: dict[int, Any]) -> Any:
    if isinstance(node, Const):
        return node.value
    if isinstance(node, Leaf):
        v = results.get(node.index, _MISSING)
        if v is _MISSING or isinstance(v, _Raised):
            raise _Fail
        return v
    if node.kind == "compare":
        vals = [_value(a, results) for a in node.args]
        return all(_compare(op, a, b) for op, a, b in zip(node.ops, vals, vals[1:]))
    if node.kind == "not":
        return not _truth(_value(node.args[0], results))
    if node.kind == "and":
        return all(_truth(_value(a, results)) for a in node.args)
    if node.kind == "or":
        return any(_truth(_value(a, results)) for a in node.args)
    a, b = (_value(x, results) for x in node.args)
    if not (type(a) in (int, float) and type(b) in (int, float)):
        return False
    return math.isclose(a, b, rel_tol=node.kw[0], abs_tol=node.kw[1])


def _truth(v: Any) -> bool:
    return bool(v)  # builtin values only: no program code runs


class _Fail(Exception):
    pass


@dataclass(frozen=True)
class _Raised:
    error: str


def raised(error: str) -> _Raised:
    return _Raised(error)


def judge_calls(plan: CallTests, results: dict[int, Any]) -> tuple[int, int | None]:
    """(number of checks passed, line of the first failing check or None)."""
    passed, first_bad = 0, None
    for c in plan.checks:
        try:
            ok = _truth(_value(c.node, results))
        except (_Fail, TypeError, ValueError, OverflowError):
            ok = False
        passed += ok
        if not ok and first_bad is None:
            first_bad = c.line
    return passed, first_bad


def normalise_output(text: str) -> list[str]:
    """Lines without trailing whitespace, trailing blank lines dropped (the usual convention
    of stdin/stdout judges)."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def judge_io(plan: IOTests, results: dict[int, tuple[str, int]]) -> tuple[int, int | None]:
    """(cases passed, index of the first failing case or None). A case passes when the
    program exited 0 and its stdout matches the expected output line by line."""
    passed, first_bad = 0, None
    for i, expected in enumerate(plan.outputs):
        got = results.get(i)
        ok = (
            isinstance(got, tuple)
            and got[1] == 0
            and normalise_output(got[0]) == normalise_output(expected)
        )
        passed += ok
        if not ok and first_bad is None:
            first_bad = i
    return passed, first_bad
