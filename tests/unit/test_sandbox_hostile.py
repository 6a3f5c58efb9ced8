"""reward.kind=sandbox against hostile programs, one mechanism per case.

Every hostile program is written so that it WOULD score 1.0 if its trick worked (it returns the
right answers only when it escaped, read a secret, forged the verdict, ...), so each must score
0.0. Controls: a correct solution scores 1.0 and a subtly wrong one 0.0, in both test formats.
Programs run concurrently (one batch per scorer); after the suite nothing of any sample is left
on the host: no process, file, SysV IPC object, key or cgroup. Rootless variants run the scorer
as an unprivileged uid, with and without the explicit opt-in for missing cgroups.
"""

import ctypes
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.batch import Sample
from rlhf.config import SandboxConfig
from rlhf.reward.sandbox import SandboxScorer

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the root-mode suite runs as root")

ROOT = Path(__file__).resolve().parents[2]
TESTS = "assert solve(2) == 4\nassert solve(5) == 25\n"
RIGHT = "def solve(x):\n    return x * x\n"
TIMEOUT_S = 2.0
MEMORY_MB = 192
TAG_FILE = "rlhf-hostile-marker"
HOST_DIRS = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/run"]
SHM_KEY = 0x52_4C_48_46  # 'RLHF'
UNIX_PATH = f"/run/rlhf-hostile-{os.getpid()}.sock"  # /run: outside every private tmpfs
ABSTRACT = f"\0rlhf-hostile-{os.getpid()}"
libc = ctypes.CDLL(None, use_errno=True)

# The trick's success flag -> the right answer; else a wrong one.
WIN = "\ndef solve(x):\n    return x * x if WON else -1\n"

HOSTILE = {
    # -- forged verdicts: there is no nonce to find; faking output only claims values
    "nonce_in_globals": (
        "import __main__, os, re\nfor v in list(vars(__main__).values()):\n"
        "    if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v):\n"
        "        os.write(1, ('\\n' + v + '\\n').encode()); os._exit(0)\n",
        TESTS,
    ),
    "nonce_in_gc": (
        "import gc, os\nfor o in gc.get_objects():\n"
        "    if isinstance(o, dict) and isinstance(o.get('nonce'), str):\n"
        "        os.write(1, ('\\n' + o['nonce'] + '\\n').encode()); os._exit(0)\n",
        TESTS,
    ),
    "nonce_in_frames": (
        "import inspect, os\ndef solve(x):\n    for f in inspect.stack():\n"
        "        for scope in (f.frame.f_locals, f.frame.f_globals):\n"
        "            for k, v in scope.items():\n"
        "                if 'nonce' in k and isinstance(v, str):\n"
        "                    os.write(1, ('\\n' + v + '\\n').encode()); os._exit(0)\n"
        "    return None\n",
        TESTS,
    ),
    "memory_scan": (
        "import re, os\nfound = []\nfor line in open('/proc/self/maps'):\n"
        "    a, b = (int(x, 16) for x in line.split()[0].split('-'))\n"
        "    if 'rw' not in line.split()[1]:\n        continue\n"
        "    try:\n        f = open('/proc/self/mem', 'rb'); f.seek(a); data = f.read(b - a)\n"
        "    except (OSError, OverflowError, ValueError):\n        continue\n"
        '    found += re.findall(rb\'"nonce": "([0-9a-f]{32})"\', data)\n'
        "for fd in range(1, 20):\n    for h in found[-1:]:\n"
        "        try:\n            os.write(fd, b'\\n' + h + b'\\n')\n"
        "        except OSError:\n            pass\n"
        "os._exit(0)\n",
        TESTS,
    ),
    "atexit_print": (
        "import atexit, os, __main__\n"
        "def forge():\n    n = vars(__main__).get('nonce', '')\n"
        "    os.write(1, ('\\n' + n + '\\n').encode()); os._exit(0)\n"
        "atexit.register(forge)\ndef solve(x):\n    return -1\n",
        TESTS,
    ),
    "patch_eval_exec_compile": (
        "import builtins\nbuiltins.eval = lambda *a, **k: True\n"
        "builtins.exec = lambda *a, **k: None\nbuiltins.compile = lambda *a, **k: None\n",
        TESTS,
    ),
    "patch_the_harness": (
        "import sys, __main__\n__main__.tests = ''\n"  # the old harness's test code
        "__main__.encode = lambda v, depth=0: True\n__main__.describe = lambda e: 'ok'\n"
        "f = sys._getframe(1)\nwhile f:\n"
        "    if 'steps' in f.f_locals:\n        f.f_locals['steps'].clear()\n    f = f.f_back\n"
        "def solve(x):\n    return -1\n",
        TESTS,
    ),
    "forge_result_lines": (
        "import os\nfor fd in range(0, 20):\n    try:\n"
        '        os.write(fd, b\'{"k": 0, "v": true}\\n{"k": 1, "v": true}\\n\')\n'
        "    except OSError:\n        pass\nos._exit(0)\n",
        TESTS,
    ),
    "exit_before_tests": ("import os\nos._exit(0)\n", TESTS),
    "eq_always_true_left": (
        "class A:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
        "def solve(x):\n    return A()\n",
        TESTS,
    ),
    "eq_always_true_right": (
        "class A(int):\n    def __eq__(self, o):\n        return True\n"
        "def solve(x):\n    return A(0)\n",
        "assert 4 == solve(2)\nassert 25 == solve(5)\n",
    ),
    "expected_from_caller_frame": (
        # the constant the caller loads right after this call: `== 4` in `assert solve(2) == 4`
        "import sys, dis\ndef solve(x):\n    f = sys._getframe(1)\n"
        "    for i in dis.get_instructions(f.f_code):\n"
        "        if i.offset > f.f_lasti and i.opname == 'LOAD_CONST':\n"
        "            return i.argval\n"
        "    return 0\n",
        TESTS,
    ),
    "float_for_int": ("def solve(x):\n    return float(x * x)\n", TESTS),
    # -- processes that outlive the run
    "setsid_survivor": (
        # leave the process group that a timeout kills, outlive the run, act on the host later
        "import os, time\ntry:\n    os.setsid()\nexcept OSError:\n    pass\n"
        "if os.fork() == 0:\n    os.setsid()\nos.fork()\ntime.sleep(TIMEOUT + 0.5)\n"
        f"for d in {HOST_DIRS!r}:\n"
        "    try:\n"
        f"        open(d + '/{TAG_FILE}-survivor', 'w').write('later')\n"
        "    except OSError:\n        pass\n"
        "time.sleep(1000)\n",
        TESTS,
    ),
    # -- the host's filesystem
    "host_writes": (  # (/tmp and /dev/shm inside are the run's own tmpfs)
        "import os\nWON = False\n"
        f"for d in {['/run/lock', '/run', '/var/tmp', '/usr', '/lib', '/etc', '/root', '/']!r}:\n"
        "    try:\n"
        f"        open(d + '/{TAG_FILE}', 'w').write('x'); WON = True\n"
        "    except OSError:\n        pass\n" + WIN,
        TESTS,
    ),
    "fill_the_disk": (
        "WON = True\ntry:\n    with open('/tmp/fill', 'wb') as f:\n"
        "        for _ in range(200):\n            f.write(b'x' * (1 << 20))\n"
        "except OSError:\n    WON = False\n" + WIN,
        TESTS,
    ),
    "sees_the_checkout": (
        f"import os\nWON = os.path.exists({str(ROOT / 'pyproject.toml')!r})" + WIN,
        TESTS,
    ),
    "unmount_tmp": (
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "WON = libc.umount2(b'/tmp', 2) == 0 or libc.umount2(b'/usr', 2) == 0\n"
        "WON = WON or libc.mount(b'none', b'/usr', b'tmpfs', 0, None) == 0" + WIN,
        TESTS,
    ),
    "nested_user_namespace": (
        "import ctypes\nWON = ctypes.CDLL(None).unshare(0x10000000) == 0" + WIN,  # CLONE_NEWUSER
        TESTS,
    ),
    "kernel_attack_surface": (  # io_uring, bpf, perf events, userfaultfd: the syscall filter
        "import ctypes\nlibc = ctypes.CDLL(None)\nbuf = ctypes.create_string_buffer(256)\n"
        "WON = any(r >= 0 for r in (libc.syscall(425, 4, buf), libc.syscall(321, 0, buf, 64),"
        " libc.syscall(298, buf, 0, -1, -1, 0), libc.syscall(323, 0)))" + WIN,
        TESTS,
    ),
    "new_privileges": (
        "st = open('/proc/self/status').read()\n"
        "WON = 'NoNewPrivs:\\t0' in st or 'CapEff:\\t0000000000000000' not in st" + WIN,
        TESTS,
    ),
    # -- sockets and IPC
    "unix_socket_file": (
        "import socket\nWON = False\ns = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({UNIX_PATH!r}); WON = True\nexcept OSError:\n    pass" + WIN,
        TESTS,
    ),
    "unix_socket_abstract": (
        "import socket\nWON = False\ns = socket.socket(socket.AF_UNIX)\n"
        f"try:\n    s.connect({ABSTRACT!r}); WON = True\nexcept OSError:\n    pass" + WIN,
        TESTS,
    ),
    "tcp_to_host_loopback": (
        "import socket\nWON = False\n"
        "try:\n    socket.create_connection(('127.0.0.1', PORT), timeout=0.5); WON = True\n"
        "except OSError:\n    pass" + WIN,
        TESTS,
    ),
    "sysv_ipc": (
        # attach the host's segment (IPC namespace), and leave our own objects behind
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        f"WON = libc.shmget({SHM_KEY}, 0, 0) >= 0\n"
        f"libc.shmget({SHM_KEY + 1}, 4096, 0o1666)\nlibc.msgget({SHM_KEY + 2}, 0o1666)\n"
        f"libc.semget({SHM_KEY + 3}, 1, 0o1666)" + WIN,
        TESTS,
    ),
    "keyrings": (
        # find the key the host put in its session keyring; leave keys of our own
        "import ctypes\nlibc = ctypes.CDLL(None)\n"
        "WON = libc.syscall(250, 10, -3, b'user', b'rlhf-hostile-host-key', 0) >= 0\n"  # SEARCH
        "WON = WON or libc.syscall(250, 10, -4, b'user', b'rlhf-hostile-host-key', 0) >= 0\n"
        "WON = WON or b'rlhf-hostile-host-key' in open('/proc/keys', 'rb').read()\n"
        "for ring in (-3, -4, -5):\n"
        "    libc.syscall(248, b'user', b'rlhf-hostile-left', b'x', 1, ring)" + WIN,
        TESTS,
    ),
    # -- resources
    "memory_fan_out": (
        # 4 children of 120 MB each: each is under RLIMIT_AS, together over the run's limit
        "import os, time\nWON = True\npids = []\nfor _ in range(4):\n    pid = os.fork()\n"
        "    if pid == 0:\n        b = bytearray(120 << 20)\n"
        "        for i in range(0, len(b), 4096):\n            b[i] = 1\n"
        "        time.sleep(0.5)\n        os._exit(0)\n    pids.append(pid)\n"
        "for p in pids:\n    WON = WON and os.waitpid(p, 0)[1] == 0" + WIN,
        TESTS,
    ),
    "fork_bomb": (
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        TESTS,
    ),
}


def _keyctl_search_own(desc: bytes) -> int:
    return libc.syscall(250, 10, -3, b"user", desc, 0)


@pytest.fixture(scope="module")
def host_bait():
    """Things on the host that a contained program cannot reach: a listening TCP port, a unix
    socket file, an abstract unix socket, a SysV shm segment, a key in our session keyring."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(UNIX_PATH)
    os.chmod(UNIX_PATH, 0o777)
    unix.listen(8)
    unix.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(ABSTRACT)
    abstract.listen(8)
    abstract.setblocking(False)
    shmid = libc.shmget(SHM_KEY, 4096, 0o1666)
    key = libc.syscall(248, b"user", b"rlhf-hostile-host-key", b"secret", 6, -3)
    yield {"port": tcp.getsockname()[1], "sockets": [tcp, unix, abstract]}
    for s in (tcp, unix, abstract):
        with pytest.raises(BlockingIOError):  # nothing ever connected
            s.accept()
        s.close()
    os.unlink(UNIX_PATH)
    libc.shmctl(shmid, 0, None)  # IPC_RMID
    if key > 0:
        libc.syscall(250, 21, key)  # KEYCTL_INVALIDATE


@pytest.fixture(scope="module")
def scorer():
    sb = SandboxScorer(
        SandboxConfig(
            timeout_s=TIMEOUT_S, cpu_s=2, memory_mb=MEMORY_MB, max_processes=24, concurrency=4
        )
    )
    assert not sb.unavailable, sb.unavailable
    yield sb
    sb.close()


def _score(sb, programs: dict[str, tuple[str, object]]) -> dict[str, Sample]:
    samples = {
        name: Sample(group_id=0, response=code, fields={"tests": tests})
        for name, (code, tests) in programs.items()
    }
    outs = sb.score(list(samples.values()))
    for s, (value, err) in zip(samples.values(), outs):
        assert err is None, err
        s.reward = value
    return samples


@pytest.fixture(scope="module")
def hostile(scorer, host_bait):
    t0 = time.monotonic()
    progs = {
        n: (code.replace("PORT", str(host_bait["port"])).replace("TIMEOUT", str(TIMEOUT_S)), tests)
        for n, (code, tests) in HOSTILE.items()
    }
    out = _score(scorer, progs)
    print(f"{len(progs)} hostile programs in {time.monotonic() - t0:.1f} s")
    return out


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_program_scores_zero(hostile, scorer, name):
    if name == "kernel_attack_surface" and scorer.seccomp is None:
        pytest.skip("no syscall filter here (python3-seccomp is not installed)")
    s = hostile[name]
    assert s.reward == 0.0, s.info
    assert s.info["sandbox_s"] < TIMEOUT_S + 1.5, s.info
    if name not in ("fork_bomb", "setsid_survivor"):  # the others fail on the verdict
        assert s.info["sandbox_status"] != "timeout", s.info


def test_memory_fan_out_is_bounded_by_the_run(hostile):
    info = hostile["memory_fan_out"].info
    assert info["sandbox_peak_mb"] <= MEMORY_MB + 1, info  # the whole run, not per process


def test_controls(scorer):
    io = [{"input": "2\n", "output": "4\n"}, {"input": "5\n", "output": "25"}]
    out = _score(
        scorer,
        {
            "right": (RIGHT, TESTS),
            "right_lines": (f"```python\n{RIGHT}```", TESTS.splitlines()),
            "right_reversed": (RIGHT, "assert 4 == solve(2)\nassert 25 == solve(5)\n"),
            "off_by_one": ("def solve(x):\n    return x * x if x < 5 else x * x + 1\n", TESTS),
            "right_io": ("print(int(input()) ** 2)\n", io),
            "right_io_json": ("import sys\nprint(int(sys.stdin.read()) ** 2)\n", json.dumps(io)),
            "wrong_io": ("n = int(input())\nprint(n * n if n < 5 else n * n + 1)\n", io),
            "right_forms": (
                "import math\ndef area(r):\n    return math.pi * r * r\n"
                "def pair(a):\n    return sorted(set(a))\n",
                "import math\nassert math.isclose(area(2), 12.566, rel_tol=1e-3)\n"
                "assert set(pair([3, 1, 3])) == set((1, 3))\nassert not pair([])\n"
                "assert pair([2]) is not None and len(pair([2, 2])) == 1\n",
            ),
        },
    )
    assert {n: s.reward for n, s in out.items()} == {
        "right": 1.0,
        "right_lines": 1.0,
        "right_reversed": 1.0,
        "off_by_one": 0.0,
        "right_io": 1.0,
        "right_io_json": 1.0,
        "wrong_io": 0.0,
        "right_forms": 1.0,
    }, {n: s.info for n, s in out.items()}


def test_a_hostile_sample_does_not_starve_correct_neighbours(scorer):
    """Fork bombs, memory hogs and CPU spinners next to correct programs, all at once: each
    run has its own process, memory and CPU budget."""
    spin = "import os\nfor _ in range(8):\n    os.fork()\nwhile True:\n    pass\n"
    hog = "b = []\nwhile True:\n    b.append(bytearray(8 << 20))\n"
    progs = {"bomb": (HOSTILE["fork_bomb"][0], TESTS), "spin": (spin, TESTS), "hog": (hog, TESTS)}
    progs |= {f"neighbour{i}": (RIGHT, TESTS) for i in range(5)}
    out = _score(scorer, progs)
    assert [out[f"neighbour{i}"].reward for i in range(5)] == [1.0] * 5, {
        n: s.info for n, s in out.items()
    }
    assert out["bomb"].reward == out["spin"].reward == out["hog"].reward == 0.0


def test_no_channel_between_samples(scorer):
    """What one sample leaves anywhere it can write is gone for the next one."""
    write = (
        "import os\nfor d in ('/tmp', '/dev/shm', '/var/tmp', '/run/lock'):\n"
        f"    try:\n        open(d + '/{TAG_FILE}-chan', 'w').write('hi')\n"
        "    except OSError:\n        pass\n" + RIGHT
    )
    read = (
        "import os\nWON = any(os.path.exists(d + '/"
        + TAG_FILE
        + "-chan') for d in ('/tmp', '/dev/shm', '/var/tmp', '/run/lock'))"
        + WIN
    )
    assert _score(scorer, {"w": (write, TESTS)})["w"].reward == 1.0
    assert _score(scorer, {"r": (read, TESTS)})["r"].reward == 0.0


# -- rootless: the scorer itself runs as an unprivileged uid -----------------------------------
ROOTLESS_UID = 4242
ROOTLESS_TAGS: list[str] = []  # the rootless scorers' tags, for the final check
_ROOTLESS = """
import json, logging, sys
logging.basicConfig(level=logging.WARNING)
from rlhf.config import SandboxConfig
from rlhf.reward.sandbox import SandboxScorer  # (no rlhf.batch: torch costs 2 s to import)
progs = json.loads(sys.argv[1])
sb = SandboxScorer(SandboxConfig(timeout_s=2.0, memory_mb=192, concurrency=4,
                                 allow_no_cgroups=sys.argv[2] == "1"))
out = {"unavailable": sb.unavailable, "isolation": sb.isolation, "rewards": {}, "tag": sb.tag}
if not sb.unavailable:  # all at once, `concurrency` at a time, as score() runs them
    runs = {name: sb.pool.submit(sb.run, code, tests) for name, (code, tests) in progs.items()}
    out["rewards"] = {name: r.result().reward for name, r in runs.items()}
sb.close()
print("RESULT " + json.dumps(out))
"""


def _rootless(tmp_path: Path, progs: dict, opt_in: bool, cgroups: list[Path] = ()) -> dict:
    """Run the scorer as ROOTLESS_UID, inside `cgroups` (delegated to it) when given."""
    progs = {n: (c.replace("TIMEOUT", str(TIMEOUT_S)), t) for n, (c, t) in progs.items()}
    cmd = ["setpriv", f"--reuid={ROOTLESS_UID}", f"--regid={ROOTLESS_UID}", "--clear-groups"]
    cmd += ["--", sys.executable, "-c", _ROOTLESS, json.dumps(progs), "1" if opt_in else "0"]
    if cgroups:
        join = 'for f in $CGROUPS; do echo $$ >"$f/cgroup.procs"; done; exec "$@"'
        cmd = ["sh", "-c", join, "sh", *cmd]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "HOME": str(tmp_path), "CGROUPS": " ".join(map(str, cgroups))},
    )
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-2000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    ROOTLESS_TAGS.append(out["tag"])
    return out | {"log": proc.stderr}


@pytest.fixture
def delegated_cgroups():
    """A cgroup per hierarchy (memory, pids, cpu, v2) owned by the rootless uid, as systemd's
    Delegate= or a container runtime would hand one to an unprivileged user."""
    own = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else ["unified"]:
            own[c] = path.rstrip("/")
    dirs = []
    for c in ("memory", "pids", "cpu", "unified"):
        base = Path(f"/sys/fs/cgroup/{c}{own.get(c, '')}")
        if not base.is_dir():
            continue
        d = base / f"rlhf-hostile-delegated-{os.getpid()}"
        d.mkdir()
        for p in [d, *d.iterdir()]:
            os.chown(p, ROOTLESS_UID, ROOTLESS_UID)
        dirs.append(d)
    yield dirs
    for d in dirs:
        d.rmdir()  # empty: the scorer removed its own cgroups below it


@pytest.fixture(scope="module")
def trainer_files(tmp_path_factory):
    """A checkpoint folder and a secret owned by the (rootless) trainer's uid."""
    d = tmp_path_factory.mktemp("rootless-trainer")
    os.chmod(d, 0o755)
    (d / "secret.txt").write_text("trainer-secret")
    (d / "checkpoints").mkdir()
    for p in (d, d / "secret.txt", d / "checkpoints"):
        os.chown(p, ROOTLESS_UID, ROOTLESS_UID)
    os.chmod(d / "secret.txt", 0o600)
    return d


def test_rootless_fails_closed_without_cgroups(tmp_path):
    out = _rootless(tmp_path, {"right": (RIGHT, TESTS)}, opt_in=False)
    assert "per-run cgroup limits" in out["unavailable"], out
    assert out["log"].count("sandbox rewards are OFF") == 1 and "allow_no_cgroups" in out["log"]


def test_rootless_with_opt_in_is_contained(tmp_path, trainer_files):
    secret, ckpt = trainer_files / "secret.txt", trainer_files / "checkpoints"
    progs = {
        "right": (RIGHT, TESTS),
        "wrong": ("def solve(x):\n    return x + x\n", TESTS),
        "read_trainer_file": (
            f"try:\n    WON = open({str(secret)!r}).read() == 'trainer-secret'\n"
            "except OSError:\n    WON = False" + WIN,
            TESTS,
        ),
        "write_trainer_files": (
            "WON = False\n"
            f"for p in ({str(ckpt / 'evil')!r}, {str(ROOT / 'evil')!r}, {str(trainer_files)!r}):\n"
            "    try:\n        open(p + '.x', 'w').write('x'); WON = True\n"
            "    except OSError:\n        pass" + WIN,
            TESTS,
        ),
        "unmount_tmp": HOSTILE["unmount_tmp"],
        "nested_user_namespace": HOSTILE["nested_user_namespace"],
        "new_privileges": HOSTILE["new_privileges"],
        "sees_the_checkout": HOSTILE["sees_the_checkout"],
        "patch_the_harness": HOSTILE["patch_the_harness"],
        "eq_always_true_left": HOSTILE["eq_always_true_left"],
        "setsid_survivor": HOSTILE["setsid_survivor"],
        "keyrings": HOSTILE["keyrings"],
        "sysv_ipc": HOSTILE["sysv_ipc"],
    }
    out = _rootless(tmp_path, progs, opt_in=True)
    assert not out["unavailable"] and "rootless" in out["isolation"], out
    expected = {n: 0.0 for n in progs} | {"right": 1.0}
    assert out["rewards"] == expected, out
    assert list(ckpt.iterdir()) == [] and not (ROOT / "evil.x").exists()
    assert not any(p.name.endswith(".x") for p in trainer_files.iterdir())
    time.sleep(1.0)  # the survivor would act 0.5 s after its run's timeout
    assert _tagged_processes(out["tag"]) == []


def test_rootless_with_delegated_cgroups_is_contained(tmp_path, delegated_cgroups):
    """The full set of limits without root: memory fan-out and starvation are contained too."""
    progs = {
        "right": (RIGHT, TESTS),
        "wrong": ("def solve(x):\n    return x + x\n", TESTS),
        "memory_fan_out": HOSTILE["memory_fan_out"],
        "fork_bomb": HOSTILE["fork_bomb"],
        "sees_the_checkout": HOSTILE["sees_the_checkout"],
        "neighbour0": (RIGHT, TESTS),
        "neighbour1": (RIGHT, TESTS),
    }
    out = _rootless(tmp_path, progs, opt_in=False, cgroups=delegated_cgroups)
    assert not out["unavailable"] and "NO per-run cgroups" not in out["isolation"], out
    expected = {n: 0.0 for n in progs} | {"right": 1.0, "neighbour0": 1.0, "neighbour1": 1.0}
    assert out["rewards"] == expected, out


# -- after the suite: nothing of any sample remains on the host ---------------------------------
def _tagged_processes(tag: str) -> list[int]:
    marker = f"RLHF_SANDBOX_TAG={tag}".encode()
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if marker in f.read().split(b"\0"):
                        out.append(int(d))
            except OSError:
                continue
    return out


def test_nothing_of_any_sample_remains_on_the_host(scorer, hostile):
    time.sleep(1.0)  # setsid survivors would act 0.5 s after their run's timeout
    # by tag: other test sessions' sandboxes may run as the same uids at the same time
    for tag in [scorer.tag, *ROOTLESS_TAGS]:
        assert _tagged_processes(tag) == [], tag
    for d in HOST_DIRS + ["/usr", "/", "/etc"]:
        left = [p for p in os.listdir(d) if p.startswith(TAG_FILE)]
        assert left == [], (d, left)
        owned = [p for p in os.listdir(d) if _owner(Path(d) / p) in (65534, ROOTLESS_UID)]
        assert owned == [], (d, owned)
    for kind in ("shm", "msg", "sem"):
        rows = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
        keys = {int(r.split()[0]) for r in rows}
        assert not keys & {SHM_KEY + 1, SHM_KEY + 2, SHM_KEY + 3}, (kind, rows)
    assert _keyctl_search_own(b"rlhf-hostile-left") < 0
    # Keys: none that a sample added is reachable by its uid (from the host's user namespace:
    # its user, user-session and session keyrings) once the kernel has collected the runs'
    # keyrings (it frees a dead user namespace's keyrings asynchronously, within seconds).
    t0 = time.monotonic()
    while (keys := _sample_keys()) and time.monotonic() - t0 < 30:
        time.sleep(0.25)
    print(f"keys gone after {time.monotonic() - t0:.1f} s")
    assert keys == [], keys
    slots = list(scorer.slots.queue)  # every slot's cgroups hold its idle spawner, nothing else
    assert len(slots) == 4 and all(s.dirs for s in slots)
    for slot in slots:
        for d in slot.dirs:
            assert (d / "cgroup.procs").read_text().split() == [str(slot.proc.pid)], d
            if (d / "pids.current").exists():  # no zombie of a run is charged to the next one
                assert (d / "pids.current").read_text().strip() == "1", d


_FIND_KEYS = """
import ctypes
libc = ctypes.CDLL(None)
for ring in (-3, -4, -5):  # session (else user-session), user, user-session keyrings
    k = libc.syscall(250, 10, ring, b"user", b"rlhf-hostile-left", 0)  # KEYCTL_SEARCH
    if k >= 0:
        print(ring, k)
"""


def _sample_keys() -> list[str]:
    """Keys left by the `keyrings` program, as seen by the sandbox uid and the rootless one."""
    out = []
    for uid in (65534, ROOTLESS_UID):
        proc = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
            + ["/usr/bin/python3", "-I", "-S", "-c", _FIND_KEYS],
            capture_output=True,
            text=True,
            timeout=30,
            cwd="/",
        )
        out += [f"uid {uid}: {line}" for line in proc.stdout.splitlines()]
    return out


def _owner(p: Path) -> int:
    try:
        return p.lstat().st_uid
    except OSError:
        return -1


def test_cgroups_are_removed_on_close():
    sb = SandboxScorer(SandboxConfig(timeout_s=TIMEOUT_S))
    parents = [h.parent for h in sb.cgroups.hierarchies]
    assert parents and all(p.is_dir() for p in parents)
    sb.close()
    assert not any(p.exists() for p in parents)


def test_tests_that_cannot_be_scored_are_a_reward_error(scorer):
    s = Sample(group_id=0, response=RIGHT, fields={"tests": "x = 1\n"})
    [(value, err)] = scorer.score([s])
    assert value is None and err.startswith("exception: TestFormatError: tests contain no assert")
    s = Sample(group_id=0, response=RIGHT, fields={"tests": [{"input": "1"}]})
    [(value, err)] = scorer.score([s])
    assert value is None and "lacks 'output'" in err
