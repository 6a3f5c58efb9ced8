"""reward.kind=sandbox: correct and wrong programs, and a suite of hostile programs (fork bomb,
infinite loop, 4 GB allocation, reading a canary secret, writing outside its directory, opening
a socket, killing its parent, leaving a daemon behind, faking success). Each scores 0, finishes
within its timeout plus a small margin, leaves no process behind, and the canary appears in no
output. Fail closed: when isolation cannot be set up, every sample gets the fallback."""

import logging
import os
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
    """Our sandbox launchers (`bwrap` children of this process) still running. Other children
    (e.g. multiprocessing's resource tracker from earlier tests) are not the sandbox's."""
    me = str(os.getpid())
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{d}/cmdline", "rb") as f:
                    argv0 = f.read().split(b"\0")[0]
            except OSError:
                continue
            if fields[1] == me and fields[0] != "Z" and argv0.endswith(b"bwrap"):
                out.append(int(d))
    return out


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
