"""reward.kind=sandbox: run model-generated Python against test cases in an isolated process.

The completion's code (the last ```python fenced block, else the whole completion) runs, then
the sample's tests (`fields[sandbox.tests_key]`: code with asserts, or a list of such lines).
The reward is 1.0 when the program exits 0 after every test ran and the harness printed its
per-run nonce last (so an early `os._exit(0)` does not pass), else 0.0; the reason goes to
`sample.info["sandbox_status"]`.

Isolation (each layer checked once at start-up by a probe program; FAIL CLOSED: if the probe
fails, every sample gets the fallback with error "exception: SandboxUnavailable: <why>", one
warning is logged, and nothing ever runs unsandboxed):
- `unshare --mount --net --pid --fork --kill-child --mount-proc`: a new network namespace (only a
  down loopback: no sockets reach anything), a new PID namespace (the program sees only its own
  processes and cannot signal ours; when it exits or is killed, the kernel kills everything it
  started, daemons included), a private mount namespace with fresh tmpfs on /tmp, /var/tmp and
  /dev/shm (its working directory lives there and vanishes with it).
- As root, the harness drops to uid/gid 65534 (nobody) with no groups before the program runs:
  it cannot write outside its directory or read root's files. Without root, a user namespace
  (`unshare --user --map-root-user`) is used instead.
- rlimits: CPU seconds, address space, file size, process count (RLIMIT_NPROC of the sandbox
  user), no core files.
- A wall-clock timeout, after which the whole process group is SIGKILLed (unshare's
  --kill-child then takes the namespace down with it).
- A scrubbed environment (PATH, HOME, LANG and a non-secret RLHF_SANDBOX_TAG only), stdin
  closed, output capped.
- `python -I -S`: no site-packages, no PYTHON* variables, no user site.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rlhf.config import SandboxConfig

log = logging.getLogger(__name__)

SANDBOX_UID = 65534  # nobody
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)

# Runs as PID 1 of the new namespaces; reads its spec from stdin, then becomes the program.
_HARNESS = r"""
import ctypes, json, os, resource, sys
spec = json.loads(sys.stdin.read())
fd = os.open("/dev/null", os.O_RDONLY); os.dup2(fd, 0); os.close(fd)
libc = ctypes.CDLL(None, use_errno=True)
for d in ("/tmp", "/var/tmp", "/dev/shm"):
    if os.path.isdir(d) and libc.mount(b"none", d.encode(), b"tmpfs", 6, b"size=64m,mode=1777"):
        sys.exit("sandbox: cannot mount a private %s (errno %d)" % (d, ctypes.get_errno()))
work = "/tmp/work"
os.mkdir(work, 0o700)
uid = spec["uid"]
if uid is not None:
    os.chown(work, uid, uid)
os.chdir(work)
for name, value in spec["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))
if uid is not None:
    os.setgroups([]); os.setgid(uid); os.setuid(uid)
    if os.getuid() != uid or os.geteuid() != uid:
        sys.exit("sandbox: could not drop privileges")
os.environ.clear()
os.environ.update(PATH="/usr/bin:/bin", HOME=work, LANG="C.UTF-8", RLHF_SANDBOX_TAG=spec["tag"])
nonce, code, tests = spec["nonce"], spec["code"], spec["tests"]
del spec
scope = {"__name__": "__main__"}
exec(compile(code, "solution.py", "exec"), scope)
exec(compile(tests, "tests.py", "exec"), scope)
sys.stdout.flush(); sys.stderr.flush()
os.write(1, ("\n" + nonce + "\n").encode())
"""


def extract_code(completion: str) -> str:
    """The last fenced code block of the completion, else the whole completion."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


def _tail_reader(stream, keep: int, out: list[bytes]) -> None:
    """Drain `stream` (so the program never blocks on a full pipe), keeping its last `keep`
    bytes."""
    buf = b""
    while True:
        chunk = stream.read(65536)
        if not chunk:
            break
        buf = (buf + chunk)[-keep:]
    out.append(buf)


class SandboxScorer:
    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.python = cfg.python or (
            "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
        )
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency)  # threads only wait
        # Not a secret: marks this scorer's sandbox processes (RLHF_SANDBOX_TAG in their
        # environment) so that tests can find any left behind.
        self.tag = secrets.token_hex(8)
        self.isolation, self.unavailable = self._probe()
        if self.unavailable:
            log.warning(
                "sandbox rewards are OFF (every sample gets the fallback): %s", self.unavailable
            )

    # -- set-up ------------------------------------------------------------------------------
    def _command(self, rootless: bool) -> list[str]:
        ns = ["--mount", "--net", "--pid", "--fork", "--kill-child", "--mount-proc"]
        if rootless:
            ns = ["--user", "--map-root-user"] + ns
        return ["unshare", *ns, "--", self.python, "-I", "-S", "-c", _HARNESS]

    def _probe(self) -> tuple[str, str]:
        """Find an isolation that works here: root namespaces + nobody, else a user namespace.
        Returns (description, '') or ('', why nothing works)."""
        if shutil.which("unshare") is None:
            return "", "the `unshare` tool (util-linux) is not installed"
        probe = (
            "import os, socket\n"
            "s = socket.socket()\n"
            "try:\n    s.connect(('1.1.1.1', 53)); print('NET')\nexcept OSError:\n    pass\n"
        )
        tests = "assert os.getpid() == 1\n"
        tried = []
        for rootless in [False, True] if os.geteuid() == 0 else [True]:
            self._rootless = rootless
            status, out, err = self.run_program(probe, tests)
            if status == "passed" and "NET" not in out:
                what = (
                    "user namespace (rootless)"
                    if rootless
                    else f"root namespaces, uid {SANDBOX_UID}"
                )
                return f"unshare mount+net+pid namespaces, {what}, rlimits", ""
            tried.append(f"{'rootless' if rootless else 'root'}: {status} {err[-200:]!r}")
        return "", "no isolation could be set up (" + "; ".join(tried) + ")"

    # -- running -------------------------------------------------------------------------------
    def run_program(self, code: str, tests: str) -> tuple[str, str, str]:
        """Run code + tests sandboxed. Returns (status, stdout tail, stderr tail); status is
        'passed', 'failed (exit N)', 'killed by signal N', 'timeout' or 'no result'."""
        c = self.cfg
        nonce = secrets.token_hex(16)
        limits = {
            "RLIMIT_CPU": c.cpu_s,
            "RLIMIT_AS": c.memory_mb << 20,
            "RLIMIT_FSIZE": c.file_size_mb << 20,
            "RLIMIT_NPROC": c.max_processes,
            "RLIMIT_CORE": 0,
        }
        spec = {
            "uid": None if self._rootless else SANDBOX_UID,
            "limits": limits,
            "nonce": nonce,
            "code": code,
            "tests": tests,
            "tag": self.tag,
        }
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "RLHF_SANDBOX_TAG": self.tag}
        proc = subprocess.Popen(
            self._command(self._rootless),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        keep = c.max_output_kb << 10
        outs: list[bytes] = []
        errs: list[bytes] = []
        readers = [
            threading.Thread(target=_tail_reader, args=(proc.stdout, keep, outs), daemon=True),
            threading.Thread(target=_tail_reader, args=(proc.stderr, keep, errs), daemon=True),
        ]
        for t in readers:
            t.start()
        timed_out = False
        try:
            proc.stdin.write(json.dumps(spec).encode())
            proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            proc.wait(timeout=c.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            self._kill_group(proc)
        for t in readers:
            t.join(timeout=2)
        out = (outs[0] if outs else b"").decode(errors="replace")
        err = (errs[0] if errs else b"").decode(errors="replace")
        if timed_out:
            return "timeout", out, err
        rc = proc.returncode
        if rc < 0:
            return f"killed by signal {-rc}", out, err
        if rc != 0:
            return f"failed (exit {rc})", out, err
        lines = out.rstrip("\n").rsplit("\n", 1)
        if lines[-1] != nonce:
            return "no result", out, err
        return "passed", (lines[0] if len(lines) > 1 else ""), err

    @staticmethod
    def _kill_group(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # unshare and anything left in its session
        except ProcessLookupError:
            pass
        proc.wait()

    def _one(self, sample) -> tuple[Any, str | None]:
        tests = sample.fields.get(self.cfg.tests_key)
        if tests is None:
            return None, f"exception: KeyError: sample has no {self.cfg.tests_key!r} field"
        if isinstance(tests, (list, tuple)):
            tests = "\n".join(map(str, tests))
        t0 = time.monotonic()
        status, _, err = self.run_program(extract_code(sample.response), str(tests))
        sample.info["sandbox_status"] = status
        sample.info["sandbox_s"] = round(time.monotonic() - t0, 3)
        if status != "passed" and err.strip():
            sample.info["sandbox_stderr"] = err.strip()[-200:]
        return (1.0 if status == "passed" else 0.0), None

    def score(self, samples: list) -> list[tuple[Any, str | None]]:
        if self.unavailable:
            return [(None, f"exception: SandboxUnavailable: {self.unavailable}"[:300])] * len(
                samples
            )
        return list(self.pool.map(self._one, samples))

    def close(self) -> None:
        self.pool.shutdown(wait=True)
