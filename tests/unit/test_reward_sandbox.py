"""reward.kind=sandbox: correct and wrong programs, and a suite of hostile programs (fork bomb,
infinite loop, 4 GB allocation, reading a canary secret, writing outside its directory, opening
a socket, killing its parent, leaving a daemon behind, faking success). Each scores 0, finishes
within its timeout plus a small margin, leaves no process behind, and the canary appears in no
output. Fail closed: when isolation cannot be set up, every sample gets the fallback."""

import json
import logging
import os
import re
import socket
import time
from pathlib import Path

import pytest

from rlhf.batch import Sample
from rlhf.config import RewardConfig, SandboxConfig
from rlhf.reward.actor import RewardActor, reward_metrics
from rlhf.reward.sandbox import SandboxScorer, extract_code

CANARY = "rlhf-canary-7f3e9c1d"
TIMEOUT_S = 2.0
MARGIN_S = 1.5
TESTS = "assert solve(2) == 4\nassert solve(5) == 25\n"


def _sandbox_processes(tag: str) -> list[int]:
    """Live processes started by the scorer with this tag (RLHF_SANDBOX_TAG in their
    environment), wherever they were reparented to. Other test sessions' sandboxes have other
    tags, so this is safe to run concurrently."""
    marker = f"RLHF_SANDBOX_TAG={tag}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{d}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if marker in env.split(b"\0") and state != "Z":
                pids.append(int(d))
    return pids


def _children() -> list[int]:
    """Our sandbox launchers (`bwrap` processes descending from this one: the slots' spawners
    fork them) still running. Other processes are not the sandbox's."""
    parent, argv0, state = {}, {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv0[int(d)] = f.read().split(b"\0")[0]
            except OSError:
                continue
            parent[int(d)], state[int(d)] = int(fields[1]), fields[0]

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [p for p, a in argv0.items() if a.endswith(b"bwrap") and state.get(p) != "Z" and ours(p)]


@pytest.fixture(scope="module")
def listener():
    """A socket on the host's loopback that a sandboxed program must not reach."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    s.setblocking(False)
    yield s
    s.close()


@pytest.fixture(scope="module")
def actor():
    os.environ["RLHF_SANDBOX_CANARY"] = CANARY  # in the reward actor's own environment
    a = RewardActor(
        RewardConfig(
            kind="sandbox",
            fallback=-1.0,
            sandbox=SandboxConfig(
                timeout_s=TIMEOUT_S, cpu_s=1, memory_mb=256, max_processes=16, concurrency=2
            ),
        ),
        "addition",
    )
    yield a
    a.close()
    os.environ.pop("RLHF_SANDBOX_CANARY", None)


def test_this_machine_allows_isolation(actor):
    sb = actor.terms[0].scorer
    assert not sb.unavailable, sb.unavailable
    print("sandbox isolation:", sb.isolation)


def test_correct_and_wrong_programs(actor):
    out = actor.score(
        [
            Sample(
                group_id=0, response="def solve(x):\n    return x * x\n", fields={"tests": TESTS}
            ),
            Sample(
                group_id=0,
                response="Here:\n```python\ndef solve(x):\n    return x ** 2\n```\n",
                fields={"tests": TESTS.splitlines()},
            ),
            Sample(
                group_id=0, response="def solve(x):\n    return x + x\n", fields={"tests": TESTS}
            ),
            Sample(group_id=0, response="def solve(x) return", fields={"tests": TESTS}),
            Sample(group_id=0, response="def solve(x): return x", fields={}),
        ]
    )
    assert [s.reward for s in out] == [1.0, 1.0, 0.0, 0.0, -1.0]
    assert out[2].info["sandbox_status"] == (
        "wrong answer (1/2 checks passed, first failure: tests line 2)"
    )
    assert out[3].info["sandbox_status"] == "program error: SyntaxError"
    assert "SyntaxError" in out[3].info["sandbox_stderr"]
    assert out[4].info["reward_error"].startswith("exception: KeyError")


HOSTILE = {
    "fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    ),
    "infinite_loop": "while True:\n    pass\n",
    "allocate_4gb": "x = bytearray(4 << 30)\ndef solve(x):\n    return x * x\n",
    "read_canary": (
        "import os\nprint(os.environ.get('RLHF_SANDBOX_CANARY'))\n"
        "print(open('/proc/1/environ').read())\n"
        "print(open(f'/proc/{os.getppid()}/environ').read())\n"
    ),
    # /tmp is a private tmpfs inside; the repository is outside and not writable by nobody
    "write_outside": "open(TARGET, 'w').write('escaped')\n",
    "write_outside_tmp": "open(TMP_TARGET, 'w').write('escaped')\n",
    "open_socket": (
        "import socket\nsocket.create_connection(('127.0.0.1', PORT), timeout=1)\n"
        "def solve(x):\n    return x * x\n"
    ),
    "kill_parent": (
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
        "os.kill(1, signal.SIGKILL)\nos.killpg(0, signal.SIGKILL)\n"
    ),
    "leave_daemon": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        time.sleep(1000)\n    os._exit(0)\n"
    ),
    "fake_success": "import os\nos._exit(0)\n",
    "huge_output": "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program(actor, listener, name, tmp_path):
    target = Path(__file__).with_name(f"escaped-{os.getpid()}.txt")
    tmp_target = tmp_path / "escaped.txt"
    code = (
        HOSTILE[name]
        .replace("TMP_TARGET", repr(str(tmp_target)))
        .replace("TARGET", repr(str(target)))
        .replace("PORT", str(listener.getsockname()[1]))
    )
    t0 = time.monotonic()
    [s] = actor.score([Sample(group_id=0, response=code, fields={"tests": TESTS})])
    elapsed = time.monotonic() - t0
    assert s.reward == 0.0, s.info
    assert elapsed < TIMEOUT_S + MARGIN_S, elapsed
    assert CANARY not in repr(s.info)
    assert not target.exists() and not tmp_target.exists()
    with pytest.raises(BlockingIOError):  # nothing connected to the host's loopback
        listener.accept()
    # no process of the sandbox user, and no child of ours, is left behind
    tag = actor.terms[0].scorer.tag
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and (_sandbox_processes(tag) or _children()):
        time.sleep(0.05)
    assert _sandbox_processes(tag) == [] and _children() == []


def test_canary_never_reaches_the_output():
    os.environ["RLHF_SANDBOX_CANARY"] = CANARY
    try:
        sb = SandboxScorer(SandboxConfig(timeout_s=TIMEOUT_S))
        out = sb.run(HOSTILE["read_canary"] + "\nprint('done')\n", TESTS)
        sb.close()
    finally:
        os.environ.pop("RLHF_SANDBOX_CANARY", None)
    assert "done" in out.stderr  # it ran to the end, printing what it could read
    assert CANARY not in out.stderr and out.status != "passed"


def test_fails_closed_when_isolation_is_unavailable(monkeypatch, caplog):
    monkeypatch.setattr("shutil.which", lambda name: None)  # as if bubblewrap were missing
    with caplog.at_level(logging.WARNING):
        actor = RewardActor(RewardConfig(kind="sandbox", fallback=-1.0), "addition")
    out = actor.score(
        [Sample(group_id=0, response="def solve(x):\n    return x * x\n", fields={"tests": TESTS})]
        * 3
    )
    assert [s.reward for s in out] == [-1.0] * 3
    assert all(s.info["reward_error"].startswith("exception: SandboxUnavailable") for s in out)
    assert reward_metrics(out)["reward/errors"] == 3
    warnings = [r for r in caplog.records if "sandbox rewards are OFF" in r.getMessage()]
    assert len(warnings) == 1 and "bwrap" in warnings[0].getMessage()


def test_extract_code():
    assert extract_code("x\n```python\na = 1\n```\ny\n```py\nb = 2\n```") == "b = 2\n"
    assert extract_code("a = 1") == "a = 1"


# -- the verdict (pure: rlhf/reward/sandbox/verdict.py) --------------------------------------
def _judge(tests, values):
    """Judge `tests` with the calls' results given in order."""
    from rlhf.reward.sandbox.verdict import CallTests, judge_calls, parse_tests

    plan = parse_tests(tests)
    assert isinstance(plan, CallTests)
    evals = [k for k, (kind, _) in enumerate(plan.steps) if kind == "eval"]
    assert len(evals) == len(values)
    return judge_calls(plan, dict(zip(evals, values)))


def test_asserts_are_split_into_calls_and_expected_values():
    from rlhf.reward.sandbox.verdict import parse_tests

    plan = parse_tests(
        "import math\nassert solve(2) == 4\nassert [1, 2] == f(x=[3])\nassert not g()\n"
        "assert math.isclose(h(1), 0.5, rel_tol=1e-3)\nassert set(k()) == set((4, 5))\n"
    )
    assert plan.steps == (
        ("exec", "import math"),
        ("eval", "solve(2)"),
        ("eval", "f(x=[3])"),
        ("eval", "g()"),
        ("eval", "h(1)"),
        ("eval", "set(k())"),
    )
    sent = " ".join(src for _, src in plan.steps)
    assert "4" not in sent and "0.5" not in sent and "(4, 5)" not in sent  # expected values stay
    assert [c.line for c in plan.checks] == [2, 3, 4, 5, 6]


@pytest.mark.parametrize(
    "tests, values, passed",
    [
        ("assert f() == 4", [4], 1),
        ("assert f() == 4", [4.0], 0),  # type-exact
        ("assert f() == 1", [True], 0),
        ("assert f() == [1, (2, 3)]", [[1, (2, 3)]], 1),
        ("assert f() == [1, (2, 3)]", [[1, [2, 3]]], 0),
        ("assert f() == {'a': 1}", [{"a": 1}], 1),
        ("assert f() == {1, 2}", [{2, 1}], 1),
        ("assert f() == {1, 2}", [{True, 2}], 0),
        ("assert 4 == f()", [4], 1),
        ("assert f() != 4", [5], 1),
        ("assert f() is None", [None], 1),
        ("assert f() is None", [0], 0),
        ("assert f()", [[0]], 1),
        ("assert not f()", [""], 1),
        ("assert 0 < f() <= 3", [3], 1),
        ("assert 0 < f() <= 3", [4], 0),
        ("assert f() in [1, 2]", [2], 1),
        ("assert f() in 'abc'", ["bc"], 1),
        ("assert f() < 'a'", [1], 0),  # a TypeError is a failed check
        ("assert math.isclose(f(), 0.5, rel_tol=0.01)", [0.501], 1),
        ("assert math.isclose(f(), 0.5)", ["0.5"], 0),
        ("assert f() == sorted([3, 1])", [[1, 3]], 1),
    ],
)
def test_checks_are_judged_type_exactly(tests, values, passed):
    assert _judge(tests, values)[0] == passed


def test_a_failed_call_fails_only_its_check():
    from rlhf.reward.sandbox.verdict import raised

    assert _judge("assert f(1) == 1\nassert f(2) == 2\n", [raised("ValueError"), 2]) == (1, 1)


def test_results_are_decoded_strictly():
    from rlhf.reward.sandbox.harness import encode
    from rlhf.reward.sandbox.verdict import BadResult, decode, same

    for v in [0, -(10**40), 1.5, float("inf"), "s", b"\x00", None, True, 1j, [1, (2,)], {1: {2}}]:
        assert same(decode(json.loads(json.dumps(encode(v)))), v)
    for bad in [{"x": 1}, {"i": 1}, 3, 1.5, {"t": 1}, {"s": [[1]]}, {"i": "1", "f": "2"}]:
        with pytest.raises(BadResult):
            decode(bad)

    class Int(int):
        pass

    with pytest.raises(TypeError):
        encode(Int(4))  # a subclass (with its own __eq__) is not a builtin value


@pytest.mark.parametrize(
    "tests, message",
    [
        ("x = 1\n", "no assert"),
        ("assert f(\n", "tests line 1"),
        ([{"input": "1"}], "lacks 'output'"),
        ({"inputs": ["1"]}, "'inputs' and 'outputs'"),
        ([{"input": 1, "output": "2"}], "must be strings"),
    ],
)
def test_tests_that_cannot_be_scored_are_named(tests, message):
    from rlhf.reward.sandbox.verdict import TestFormatError, parse_tests

    with pytest.raises(TestFormatError, match=re.escape(message)):
        parse_tests(tests)


def test_stdin_stdout_cases_are_compared_line_by_line():
    from rlhf.reward.sandbox.verdict import IOTests, judge_io, parse_tests

    plan = parse_tests(json.dumps({"inputs": ["1\n", "2\n", "3\n"], "outputs": ["a\n", "b", "c"]}))
    assert isinstance(plan, IOTests) and plan.inputs == ("1\n", "2\n", "3\n")
    results = {0: ("a  \n\n", 0), 1: ("b", 1), 2: ("C", 0)}  # exit 1 fails; case matters
    assert judge_io(plan, results) == (1, 1)


def test_without_libseccomp_bindings_the_filter_is_named_missing(monkeypatch, caplog):
    from rlhf.reward.sandbox import contain

    monkeypatch.setattr(contain, "seccomp_filter", lambda: (None, "no syscall filter (test)"))
    with caplog.at_level(logging.WARNING):
        sb = SandboxScorer(SandboxConfig(timeout_s=TIMEOUT_S))
    try:
        assert not sb.unavailable and "NO syscall filter" in sb.isolation
        assert [r.getMessage() for r in caplog.records if "syscall filter" in r.getMessage()]
        assert sb.run("def solve(x):\n    return x * x\n", TESTS).reward == 1.0
    finally:
        sb.close()
