"""reward.kind=sandbox: score model-generated Python against a row's tests, with the verdict in
this (trusted) process and the program contained by bubblewrap and per-run cgroups.

The completion's code (its last ```python fenced block, else the whole completion) runs in the
sandbox; `verdict.parse_tests` decides what else goes in (the calls of assert-style tests, or the
stdin of stdin/stdout cases; never an expected value), `harness.py` runs them there and writes
results back, and `verdict` compares them here. Reward 1.0 when every check passes and the run
ended cleanly, else 0.0; `sample.info["sandbox_status"]` says why. Tests that cannot be scored
are a reward error (`exception: TestFormatError: ...`, the fallback), not a silent 0.

Containment is `contain.py`. At start-up a probe program checks every layer from inside (uid,
network, host files absent, read-only root, NO_NEW_PRIVS, no capabilities, own IPC/UTS
namespaces, a fresh session keyring, the run's cgroups); if any is missing the scorer FAILS
CLOSED: every sample gets the fallback with "exception: SandboxUnavailable: <missing layers>",
one warning names them, and nothing ever runs with less isolation. Without cgroups (e.g. a
non-root trainer without a delegated cgroup) only `reward.sandbox.allow_no_cgroups=true` runs
programs anyway, with per-process rlimits instead of per-run limits.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf.config import SandboxConfig
from rlhf.reward.sandbox import contain
from rlhf.reward.sandbox.verdict import (
    BadResult,
    CallTests,
    IOTests,
    TestFormatError,
    decode,
    judge_calls,
    judge_io,
    parse_tests,
    raised,
)

log = logging.getLogger(__name__)

_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.S)
_HARNESS = (Path(__file__).with_name("harness.py")).read_text()
_PLAN_CACHE_SIZE = 4096

# The probe's program: facts about the sandbox, judged by `_missing_layers`.
_PROBE = r"""
import os, socket
def facts():
    f = {"uid": os.getuid(), "pid": os.getpid(), "uts": os.uname().nodename}
    s = socket.socket()
    s.settimeout(1)
    try:
        s.connect(("1.1.1.1", 53)); f["net"] = True
    except OSError:
        f["net"] = False
    f["host_visible"] = os.path.exists(HOST_PATH)
    try:
        open("/usr/.rlhf-probe", "w"); f["root_writable"] = True
    except OSError:
        f["root_writable"] = False
    lines = open("/proc/self/status").read().splitlines()
    status = dict(l.split(":\t", 1) for l in lines if ":\t" in l)
    f["nnp"] = status.get("NoNewPrivs", "").strip()
    f["caps"] = status.get("CapEff", "").strip()
    f["ipc"] = os.readlink("/proc/self/ns/ipc")
    f["seccomp"] = status.get("Seccomp", "").strip()
    import ctypes
    libc = ctypes.CDLL(None)
    nr = {"x86_64": 250, "aarch64": 219, "ppc64le": 289, "s390x": 280}[os.uname().machine]
    f["keyring"] = libc.syscall(nr, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of @s
    f["touched_mb"] = len(b"\x01" * (16 << 20)) >> 20  # must show in the slot's memory peak
    return f
"""


def extract_code(completion: str) -> str:
    """The last fenced code block of the completion, else the whole completion."""
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else completion


@dataclass
class Outcome:
    reward: float
    status: str  # passed | wrong answer (...) | program error: T | timeout | killed by signal N ...
    stderr: str
    passed: int = 0  # checks (or cases) passed
    total: int = 0
    peak_mb: float | None = None


class SandboxScorer:
    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.python = cfg.python or contain.default_python()
        self.pool = ThreadPoolExecutor(max_workers=cfg.concurrency)  # threads only wait
        # Not a secret: marks this scorer's sandbox processes (RLHF_SANDBOX_TAG in their
        # environment) and cgroups, so that tests can find any left behind.
        self.tag = secrets.token_hex(8)
        self.root = os.geteuid() == 0
        self.cgroups: contain.Cgroups | None = None
        self.slots: queue.Queue[contain.Slot] = queue.Queue()
        self._plans: dict[str, CallTests | IOTests] = {}
        self.isolation, self.unavailable = self._set_up()
        if self.unavailable:
            log.warning(
                "sandbox rewards are OFF (every sample gets the fallback): %s", self.unavailable
            )

    # -- set-up ----------------------------------------------------------------------------
    def _set_up(self) -> tuple[str, str]:
        bwrap = contain.bwrap_path()
        if bwrap is None:
            return "", "bubblewrap (`bwrap`) is not installed: apt-get install bubblewrap"
        if self.root and not os.access("/usr/bin/setpriv", os.X_OK):
            return "", "setpriv (util-linux) is not installed"
        self._bwrap = bwrap
        self.seccomp, no_filter = contain.seccomp_filter()
        if no_filter:  # optional layer: said once, the rest still holds
            log.warning("sandbox: %s; install python3-seccomp to add it", no_filter)
        c = self.cfg
        cg = contain.Cgroups(self.tag, c.memory_mb << 20, c.max_processes, c.concurrency)
        no_cgroups = ""
        if cg.missing:
            if not c.allow_no_cgroups:
                return "", f"{cg.missing} (reward.sandbox.allow_no_cgroups=true runs without)"
            no_cgroups = ", NO per-run cgroups (allow_no_cgroups)"
        else:
            self.cgroups = cg
        try:
            for _ in range(c.concurrency):
                self.slots.put(contain.Slot(self.cgroups, self.python))
        except OSError as e:
            self.close_cgroups()
            return "", f"sandbox slots could not be started ({e})"
        missing = self._missing_layers()
        if missing:
            self.close_cgroups()
            return "", "missing isolation layers: " + "; ".join(missing)
        who = f"uid {contain.SANDBOX_UID}" if self.root else f"rootless (uid {os.geteuid()})"
        cgroups = ", ".join(str(h.parent) for h in cg.hierarchies) or "none"
        return (
            "bubblewrap user+pid+net+ipc+uts+mount namespaces, minimal read-only root, "
            f"{who}, per-run cgroups under {cgroups}{no_cgroups}, rlimits, "
            + ("seccomp filter" if self.seccomp else "NO syscall filter")
        ), ""

    def _missing_layers(self) -> list[str]:
        host_path = str(Path(__file__).resolve().parent)
        plan = CallTests(steps=(("eval", "facts()"),), checks=())
        # a generous limit: a loaded machine must not turn a slow start into "no isolation"
        out = self._run(_PROBE.replace("HOST_PATH", repr(host_path)), plan, timeout_s=30.0)
        if out.status != "ran":
            return [f"the probe program did not run ({out.status}: {out.stderr[-300:]!r})"]
        f = out.results.get(0)
        if not isinstance(f, dict):
            return [f"the probe program gave no facts ({f!r}; {out.stderr[-300:]!r})"]
        missing = []
        if f.get("uid") == 0 or (self.root and f.get("uid") != contain.SANDBOX_UID):
            missing.append(f"unprivileged uid (got {f.get('uid')})")
        if f.get("net") is not False:
            missing.append("network namespace (a connection went out)")
        if f.get("host_visible") is not False:
            missing.append(f"minimal root filesystem ({host_path} is visible)")
        if f.get("root_writable") is not False:
            missing.append("read-only root filesystem")
        if f.get("nnp") != "1":
            missing.append("NO_NEW_PRIVS")
        if f.get("caps") != "0000000000000000":
            missing.append(f"no capabilities (CapEff {f.get('caps')})")
        if f.get("ipc") == os.readlink("/proc/self/ns/ipc"):
            missing.append("IPC namespace")
        if f.get("uts") != contain.HOSTNAME:
            missing.append("UTS namespace")
        if not isinstance(f.get("keyring"), int) or f["keyring"] == _own_session_keyring():
            missing.append("a fresh session keyring")
        if self.seccomp is not None and f.get("seccomp") != "2":
            missing.append("the syscall filter (Seccomp mode 2)")
        if self.cgroups is not None and not (out.peak_mb or 0) >= f.get("touched_mb", 1 << 30):
            missing.append(f"the run's memory is not counted in its cgroup (peak {out.peak_mb})")
        return missing

    # -- running -----------------------------------------------------------------------------
    def _command(self) -> list[str]:
        cmd = []
        if self.root:
            cmd = ["/usr/bin/setpriv", f"--reuid={contain.SANDBOX_UID}"]
            cmd += [f"--regid={contain.SANDBOX_UID}", "--clear-groups", "--"]
        cmd += [self._bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        cmd += ["--die-with-parent", "--new-session", "--hostname", contain.HOSTNAME]
        cmd += contain.root_binds(self.python)
        cmd += ["--proc", "/proc", "--dev", "/dev"]
        cmd += ["--size", str(contain.TMPFS_MB << 20), "--tmpfs", "/tmp", "--chdir", "/tmp"]
        cmd += ["--remount-ro", "/"]  # bwrap's own root tmpfs: nothing new at the top level
        cmd += ["--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "HOME", "/tmp"]
        cmd += ["--setenv", "LANG", "C.UTF-8", "--setenv", "RLHF_SANDBOX_TAG", self.tag]
        if self.seccomp is not None:
            cmd += ["--seccomp", "{SECCOMP_FD}"]
        cmd += ["--json-status-fd", "{STATUS_FD}", "--", self.python, "-I", "-S", "-c", _HARNESS]
        return cmd

    def _limits(self) -> dict[str, int]:
        c = self.cfg
        limits = {
            "RLIMIT_CPU": c.cpu_s,
            "RLIMIT_AS": c.memory_mb << 20,
            "RLIMIT_FSIZE": c.file_size_mb << 20,
            "RLIMIT_NOFILE": contain.MAX_FDS,
            "RLIMIT_CORE": 0,
        }
        if self.cgroups is None:  # no per-run pids.max: the per-user count is all there is
            limits["RLIMIT_NPROC"] = c.max_processes
        return limits

    def _run(self, code: str, plan: CallTests | IOTests, timeout_s: float = 0.0) -> _Raw:
        c = self.cfg
        spec: dict[str, Any] = {"code": code, "limits": self._limits()}
        if isinstance(plan, IOTests):
            spec.update(mode="io", inputs=list(plan.inputs), out_limit=c.file_size_mb << 20)
        else:
            spec.update(mode="calls", steps=[list(s) for s in plan.steps])
        slot = self.slots.get()
        try:
            r = contain.run(
                slot,
                self._command(),
                json.dumps(spec).encode(),
                timeout_s or c.timeout_s,
                stdout_cap=(c.file_size_mb << 20) + (1 << 20),
                stderr_keep=c.max_output_kb << 10,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "RLHF_SANDBOX_TAG": self.tag},
                seccomp=self.seccomp,
            )
        finally:
            self.slots.put(slot)
        raw = _Raw("ran", {}, r.stderr, r.peak_mb)
        if r.rc is None:
            raw.status = "timeout"
        elif r.rc < 0:
            raw.status = f"killed by signal {-r.rc}"
        elif r.rc != 0:
            raw.status = f"failed (exit {r.rc})"
        elif r.overflow:
            raw.status = "bad result: results too large"
        try:
            _parse_results(r.stdout, plan, raw)
        except BadResult as e:
            if raw.status == "ran":
                raw.status = f"bad result: {e}"
        return raw

    def plan(self, tests: Any) -> CallTests | IOTests:
        key = tests if isinstance(tests, str) else json.dumps(tests, sort_keys=True, default=str)
        plan = self._plans.get(key)
        if plan is None:
            plan = parse_tests(tests)
            if len(self._plans) >= _PLAN_CACHE_SIZE:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def run(self, code: str, tests: Any) -> Outcome:
        """Judge `code` against `tests` (raises TestFormatError for tests it cannot score)."""
        plan = self.plan(tests)
        raw = self._run(code, plan)
        if isinstance(plan, IOTests):
            passed, first = judge_io(plan, raw.results)
            total, what = len(plan.inputs), "cases"
            where = f"case {first}"
        else:
            passed, first = judge_calls(plan, raw.results)
            total, what = len(plan.checks), "checks"
            where = f"tests line {first}"
        status = raw.status
        if status == "ran":
            if raw.program_error:
                status = f"program error: {raw.program_error}"
            elif raw.setup_error:
                status = f"tests setup error: {raw.setup_error}"
            elif passed == total:
                status = "passed"
            else:
                status = f"wrong answer ({passed}/{total} {what} passed, first failure: {where})"
        return Outcome(
            1.0 if status == "passed" else 0.0, status, raw.stderr, passed, total, raw.peak_mb
        )

    def _one(self, sample) -> tuple[Any, str | None]:
        tests = sample.fields.get(self.cfg.tests_key)
        if tests is None:
            return None, f"exception: KeyError: sample has no {self.cfg.tests_key!r} field"
        t0 = time.monotonic()
        try:
            out = self.run(extract_code(sample.response), tests)
        except TestFormatError as e:
            return None, f"exception: TestFormatError: {e}"[:300]
        except Exception as e:  # e.g. a cgroup that could not be made: this sample's fallback
            log.exception("sandbox run failed")
            return None, f"exception: {type(e).__name__}: {e}"[:300]
        sample.info["sandbox_status"] = out.status
        sample.info["sandbox_s"] = round(time.monotonic() - t0, 3)
        if out.peak_mb is not None:
            sample.info["sandbox_peak_mb"] = round(out.peak_mb, 1)
        if out.status != "passed" and out.stderr.strip():
            sample.info["sandbox_stderr"] = out.stderr.strip()[-200:]
        return out.reward, None

    def score(self, samples: list) -> list[tuple[Any, str | None]]:
        if self.unavailable:
            return [(None, f"exception: SandboxUnavailable: {self.unavailable}"[:300])] * len(
                samples
            )
        return list(self.pool.map(self._one, samples))

    def close_cgroups(self) -> None:
        while not self.slots.empty():
            self.slots.get().close()
        if self.cgroups is not None:
            self.cgroups.close()
            self.cgroups = None

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.close_cgroups()


@dataclass
class _Raw:
    status: str  # 'ran' (exit 0), or why not
    results: dict
    stderr: str
    peak_mb: float | None
    program_error: str = ""
    setup_error: str = ""


def _parse_results(stdout: bytes, plan: CallTests | IOTests, raw: _Raw) -> None:
    """The harness's JSON lines -> raw.results (index -> value, or (output, exit code) for
    stdin cases). Strict: a malformed or duplicate line raises BadResult."""
    evals = (
        set(range(len(plan.inputs)))
        if isinstance(plan, IOTests)
        else {k for k, (kind, _) in enumerate(plan.steps) if kind == "eval"}
    )
    for line in stdout.decode(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            raise BadResult("a result line is not JSON") from None
        if type(rec) is not dict:
            raise BadResult("a result line is not an object")
        if "program" in rec or "setup" in rec:
            err = str(rec.get("program") or rec.get("e"))[:80]
            if "program" in rec:
                raw.program_error = err
            else:
                raw.setup_error = err
            continue
        k = rec.get("k")
        if type(k) is not int or k not in evals or k in raw.results:
            raise BadResult(f"unexpected or repeated result index {k!r}")
        if "e" in rec:
            raw.results[k] = raised(str(rec["e"])[:80])
        elif isinstance(plan, IOTests):
            if type(rec.get("out")) is not str or type(rec.get("rc")) is not int:
                raise BadResult("malformed stdin/stdout result")
            raw.results[k] = (rec["out"], rec["rc"])
        elif "v" in rec:
            raw.results[k] = decode(rec["v"])
        else:
            raise BadResult("a result without a value")


def _own_session_keyring() -> int:
    import ctypes

    nr = {"x86_64": 250, "aarch64": 219, "ppc64le": 289, "s390x": 280}.get(os.uname().machine)
    if nr is None:
        return -1
    return ctypes.CDLL(None).syscall(nr, 0, -3, 0)
