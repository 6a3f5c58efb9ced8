"""Containment of sandboxed runs: bubblewrap namespaces, a minimal root filesystem, cgroups
per slot, and a kill that does not need the program's cooperation.

The scorer has `concurrency` slots; a slot runs one program at a time and owns a cgroup in each
hierarchy that carries a limit (memory.max or memory.limit_in_bytes with swap, pids.max, a
one-CPU quota), so each limit counts every process of the run and nothing of another run. A
slot's spawner (started inside those cgroups) forks each run: `setpriv` (as root: uid/gid
65534, no groups) -> `bwrap` -> `python -I -S -c <harness>`. bubblewrap (Debian's
`bubblewrap`, maintained, no setuid bit needed) gives:
- new user, PID, network, IPC, UTS, mount and cgroup namespaces (`--unshare-all
  --unshare-user`), no nested user namespaces (`--disable-userns`), no capabilities and
  NO_NEW_PRIVS, a new terminal session, SIGKILL when its parent dies, a seccomp filter;
- a root filesystem holding only read-only binds of /usr (and the /bin, /lib symlinks), the
  interpreter's prefix, fresh /proc and /dev, and a private size-capped tmpfs on /tmp: nothing
  of the host is writable and no host socket, checkout, checkpoint or home exists inside.
At the timeout, and after every run, the namespace's init (bwrap's PID 1, from
`--json-status-fd`) is SIGKILLed through a pidfd, which takes every process of the PID namespace
with it, `setsid` daemons included; then the slot's cgroups are swept (anything but the spawner
is SIGKILLed). Any layer that cannot be set up is reported by name (`Cgroups.missing`, the
scorer's probe) and the sandbox fails closed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_UID = 65534  # nobody
HOSTNAME = "sandbox"
MAX_FDS = 256  # RLIMIT_NOFILE inside
TMPFS_MB = 64
# sh: write our pid into each of the first $1 files (the run's cgroup.procs), then exec the rest
_JOIN = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ >"$1" || exit 125; shift; n=$((n-1)); done; '
    'exec "$@"'
)


# -- cgroups ------------------------------------------------------------------------------------
@dataclass
class _Hierarchy:
    parent: Path  # our directory for run cgroups in this hierarchy
    limits: list[tuple[str, str]]  # (file, value) written into each slot's cgroup, in order
    peak: str = ""  # file with the run's memory peak, if this hierarchy has memory


@dataclass
class Cgroups:
    """A cgroup per slot (one run at a time) in each hierarchy that limits memory, processes or
    CPU. `missing` names what could not be set up ('' when memory and pids limits both work)."""

    tag: str
    memory_bytes: int
    max_pids: int
    concurrency: int = 1  # runs at once: the CPU weight of all runs together, in tasks
    hierarchies: list[_Hierarchy] = field(default_factory=list)
    missing: str = ""
    _n: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        try:
            self.missing = self._discover()
        except OSError as e:
            self.missing = f"per-run cgroups ({e})"
        if self.missing:
            self.close()

    def _discover(self) -> str:
        mounts = _cgroup_mounts()
        paths = _own_cgroups()
        name = f"rlhf-sandbox-{os.getpid()}-{self.tag}"
        mem, pids = str(self.memory_bytes), str(self.max_pids + 1)  # + the slot's spawner
        have: set[str] = set()
        errors = []
        v2 = mounts.get("cgroup2")
        if v2 is not None and "" in paths:
            own = Path(v2 + paths[""])
            wanted = [c for c in ("memory", "pids", "cpu") if c not in mounts]
            enabled = _enable_v2(own, wanted) if wanted else []
            try:
                parent = own / name
                _remove_stale(own)
                parent.mkdir()
                if enabled:
                    (parent / "cgroup.subtree_control").write_text(
                        " ".join(f"+{c}" for c in enabled)
                    )
                if "cpu" in enabled:  # see the v1 cpu.shares below
                    (parent / "cpu.weight").write_text(str(min(10000, 100 * self.concurrency)))
            except OSError as e:
                errors.append(f"cgroup v2 at {own}: {e.strerror}")
            else:
                limits = []
                if "memory" in enabled:
                    limits += [("memory.max", mem), ("memory.swap.max", "0")]
                if "pids" in enabled:
                    limits.append(("pids.max", pids))
                if "cpu" in enabled:
                    limits.append(("cpu.max", "100000 100000"))
                peak = "memory.peak" if "memory" in enabled else ""
                if enabled:
                    self.hierarchies.append(_Hierarchy(parent, limits, peak=peak))
                    have.update(enabled)
                else:
                    parent.rmdir()
        for ctrl, limits, peak in (
            (
                "memory",
                [("memory.limit_in_bytes", mem), ("memory.memsw.limit_in_bytes", mem)],
                "memory.max_usage_in_bytes",
            ),
            ("pids", [("pids.max", pids)], ""),
            ("cpu", [("cpu.cfs_period_us", "100000"), ("cpu.cfs_quota_us", "100000")], ""),
        ):
            if ctrl in have or ctrl not in mounts or ctrl not in paths:
                continue
            parent = Path(mounts[ctrl] + paths[ctrl]) / name
            _remove_stale(parent.parent)
            try:
                parent.mkdir()
            except OSError as e:
                errors.append(f"{ctrl} cgroup at {parent.parent}: {e.strerror}")
                continue
            if ctrl == "cpu":
                # All runs share this parent group, which competes with the host's other tasks
                # as ONE task unless weighted: weight it as `concurrency` ordinary tasks (what
                # the runs would get as plain processes), each run capped at one CPU.
                try:
                    (parent / "cpu.shares").write_text(str(1024 * self.concurrency))
                except OSError:
                    pass
            self.hierarchies.append(_Hierarchy(parent, limits, peak=peak))
            have.add(ctrl)
        lacking = [c for c in ("memory", "pids") if c not in have]
        if not lacking:
            return ""
        why = "; ".join(errors) or "controller not mounted"
        return f"per-run cgroup limits ({', '.join(lacking)}): {why}"

    def create(self) -> list[Path]:
        """The cgroups of a new slot, limits set."""
        with self._lock:
            self._n += 1
            n = self._n
        dirs = []
        try:
            for h in self.hierarchies:
                d = h.parent / f"slot-{n}"
                d.mkdir()
                dirs.append(d)
                for f, value in h.limits:
                    if (d / f).exists():
                        (d / f).write_text(value)
        except OSError:
            self.remove(dirs)
            raise
        return dirs

    def peak_mb(self, dirs: list[Path]) -> float | None:
        for h, d in zip(self.hierarchies, dirs):
            if h.peak:
                try:
                    return int((d / h.peak).read_text()) / (1 << 20)
                except (OSError, ValueError):
                    return None
        return None

    def remove(self, dirs: list[Path], wait_s: float = 5.0) -> None:
        """Remove the run's cgroups once their processes are gone (SIGKILLing any left)."""
        deadline = time.monotonic() + wait_s
        for d in dirs:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    for pid in _procs(d):
                        _kill_pid(pid)
                    time.sleep(0.002)

    def close(self) -> None:
        for h in self.hierarchies:
            for d in h.parent.glob("slot-*"):
                try:
                    self.remove([d], wait_s=1.0)
                except OSError:
                    pass
            try:
                h.parent.rmdir()
            except OSError:
                pass
        self.hierarchies = []


def _cgroup_mounts() -> dict[str, str]:
    """controller -> v1 mount point, and 'cgroup2' -> the v2 mount point."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = line.partition(" - ")
        fstype, _, opts = (post.split() + ["", "", ""])[:3]
        point = pre.split()[4]
        if fstype == "cgroup2":
            out.setdefault("cgroup2", point)
        elif fstype == "cgroup":
            for o in opts.split(","):
                if o in ("memory", "pids", "cpu"):
                    out.setdefault(o, point)
    return out


def _own_cgroups() -> dict[str, str]:
    """controller -> our cgroup path (v1), '' -> our v2 path."""
    out = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        for c in ctrls.split(",") if ctrls else [""]:
            out[c] = path.rstrip("/")
    return out


def _enable_v2(own: Path, wanted: list[str]) -> list[str]:
    """The controllers of `wanted` that our v2 cgroup can hand to children."""
    try:
        available = (own / "cgroup.controllers").read_text().split()
        enabled = (own / "cgroup.subtree_control").read_text().split()
    except OSError:
        return []
    out = []
    for c in wanted:
        if c in enabled:
            out.append(c)
        elif c in available:
            try:
                (own / "cgroup.subtree_control").write_text(f"+{c}")
                out.append(c)
            except OSError:
                pass  # e.g. our own cgroup holds processes (the no-internal-process rule)
    return out


def _remove_stale(base: Path) -> None:
    """Remove the empty cgroups of scorers whose process is gone (a reward actor that was
    killed leaves its parent cgroup behind; its runs' processes died with their namespaces)."""
    for d in base.glob("rlhf-sandbox-*-*"):
        pid = d.name.split("-")[2]
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        for run_dir in [*d.glob("slot-*"), d]:
            try:
                run_dir.rmdir()
            except OSError:
                pass


def _procs(d: Path) -> list[int]:
    try:
        return [int(p) for p in (d / "cgroup.procs").read_text().split()]
    except OSError:
        return []


def _kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


# -- the syscall filter --------------------------------------------------------------------------
# Denied with EPERM: kernel interfaces a Python program never needs and that are the usual
# routes of kernel exploits from an unprivileged user namespace (Docker's default profile
# blocks the same), plus tracing other processes and changing mounts or namespaces.
DENIED_SYSCALLS = (
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "add_key", "request_key", "ptrace", "process_vm_readv",
    "process_vm_writev", "mount", "umount2", "pivot_root", "unshare", "setns", "swapon",
    "swapoff", "reboot", "syslog", "acct", "quotactl", "open_by_handle_at",
    "name_to_handle_at", "fanotify_init",
)  # fmt: skip
_SECCOMP = """
import errno, os, sys, seccomp
f = seccomp.SyscallFilter(seccomp.ALLOW)
for name in sys.argv[1:]:
    try:
        f.add_rule(seccomp.ERRNO(errno.EPERM), name)
    except (RuntimeError, ValueError):
        pass  # not a syscall on this architecture
f.export_bpf(sys.stdout.buffer)
"""


def seccomp_filter(python: str = "/usr/bin/python3") -> tuple[bytes | None, str]:
    """The compiled BPF program for bwrap --seccomp, made with libseccomp's own Python bindings
    (Debian: python3-seccomp) by the system interpreter; (None, why) when they are missing."""
    try:
        out = subprocess.run(
            [python, "-I", "-c", _SECCOMP, *DENIED_SYSCALLS],
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as e:
        err = getattr(e, "stderr", b"") or b""
        why = err.decode(errors="replace").strip().splitlines()[-1:] or [str(e)]
        return None, f"no syscall filter (libseccomp's Python bindings: {why[0][:120]})"
    return out.stdout, ""


# -- the command -------------------------------------------------------------------------------
def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def root_binds(python: str) -> list[str]:
    """bwrap arguments for the minimal root filesystem: /usr read-only, the merged-/usr
    symlinks (or read-only binds where they are real directories), the interpreter's prefix."""
    args = ["--ro-bind", "/usr", "/usr"]
    for p in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(p):
            args += ["--symlink", os.readlink(p), p]
        elif os.path.isdir(p):
            args += ["--ro-bind", p, p]
    prefix = str(Path(os.path.realpath(python)).parent.parent)
    if prefix not in ("/", "/usr") and not prefix.startswith("/usr/"):
        args += ["--ro-bind", prefix, prefix]
    return args


@dataclass
class Run:
    rc: int | None  # exit code (negative: signal), None after a timeout
    stdout: bytes  # the harness's result lines
    stderr: str  # its last bytes
    overflow: bool  # stdout was over the cap (and dropped)
    peak_mb: float | None


# The spawner: one long-lived process per slot, started inside the slot's cgroups, that forks
# every run of the slot. Runs so inherit the cgroups instead of being moved into them: moving a
# process into a cgroup (a write to cgroup.procs) made each run's Python start ~20-30 ms slower
# here, a third of a run. It receives (argv, env) and the run's pipes over a SOCK_SEQPACKET
# socket and answers with a pidfd of the run (bwrap's monitor). Trusted: no program code runs in
# it; the programs cannot reach it (another PID namespace) and the OOM killer spares it.
_SPAWNER = r"""
import ctypes, json, os, signal, socket, sys
libc = ctypes.CDLL(None)
libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the scorer
libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER: a run's orphans are reaped here, not left as zombies
try:
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write("-1000")
except OSError:
    pass
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the runs
sock = socket.socket(fileno=int(sys.argv[1]))
while True:
    try:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 8)
    except OSError:
        break
    if not msg:
        break
    req = json.loads(msg)
    pid = os.fork()
    if pid == 0:
        try:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            os.setsid()
            for i, fd in enumerate(fds):  # via 100+ first: a target may be another's source
                os.dup2(fd, 100 + i)
            for i, target in enumerate(req["targets"]):
                os.dup2(100 + i, target, inheritable=True)
            os.closerange(max(req["targets"]) + 1, 65536)
            os.execve(req["argv"][0], req["argv"], req["env"])
        finally:
            os._exit(127)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd])
    os.close(pidfd)
"""


class Slot:
    """One run at a time: its cgroups (when there are any) and its spawner."""

    def __init__(self, cgroups: Cgroups | None, python: str):
        self.cgroups, self.python = cgroups, python
        self.dirs = cgroups.create() if cgroups else []
        self.proc: subprocess.Popen | None = None
        self._start()

    def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        prefix = []
        if self.dirs:
            procs = [str(d / "cgroup.procs") for d in self.dirs]
            prefix = ["/bin/sh", "-c", _JOIN, "sh", str(len(procs)), *procs]
        try:
            self.proc = subprocess.Popen(
                [*prefix, self.python, "-I", "-S", "-c", _SPAWNER, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        finally:
            theirs.close()
        self.sock = ours

    def spawn(self, argv: list[str], env: dict[str, str], fds: list[int]) -> int:
        """Start argv with fds as 0, 1, 2, 3, ...; returns a pidfd of the new process. The
        caller's copies of fds are closed."""
        req = json.dumps({"argv": argv, "env": env, "targets": list(range(len(fds)))})
        try:
            for attempt in (0, 1):
                try:
                    socket.send_fds(self.sock, [req.encode()], fds)
                    msg, got, _, _ = socket.recv_fds(self.sock, 4096, 1)
                    if msg and got:
                        return got[0]
                except OSError:
                    pass
                if attempt == 0:  # the spawner died (it should not): a fresh one, once
                    self.close_spawner()
                    self._start()
            raise OSError("the sandbox spawner does not answer")
        finally:
            for fd in fds:
                os.close(fd)

    def sweep(self, wait_s: float = 5.0) -> None:
        """After a run: SIGKILL anything of it still in the slot's cgroups (nothing normally:
        its PID namespace is gone) and wait until only the spawner is left."""
        deadline = time.monotonic() + wait_s
        keep = {self.proc.pid} if self.proc else set()
        for d in self.dirs:
            while left := [p for p in _procs(d) if p not in keep]:
                if time.monotonic() > deadline:
                    raise OSError(f"processes {left} of a finished run stay in {d}")
                for pid in left:
                    _kill_pid(pid)
                time.sleep(0.002)

    def reset_peak(self) -> None:
        for h, d in zip(self.cgroups.hierarchies if self.cgroups else [], self.dirs):
            if h.peak:
                try:
                    (d / h.peak).write_text("0")
                except OSError:
                    pass

    def close_spawner(self) -> None:
        self.sock.close()
        if self.proc is not None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass
            self.proc.wait()

    def close(self) -> None:
        self.close_spawner()
        if self.cgroups:
            self.cgroups.remove(self.dirs)


def run(
    slot: Slot,
    command: list[str],
    stdin: bytes,
    timeout_s: float,
    stdout_cap: int,
    stderr_keep: int,
    env: dict[str, str],
    seccomp: bytes | None = None,
) -> Run:
    """Run `command` (bwrap ... --json-status-fd {STATUS_FD} [--seccomp {SECCOMP_FD}]) in the
    slot, feed it stdin, wait at most timeout_s, then kill its whole PID namespace."""
    pipes = [os.pipe() for _ in range(4)]  # stdin, stdout, stderr, bwrap's status
    child = [pipes[0][0], pipes[1][1], pipes[2][1], pipes[3][1]]
    ours = [pipes[0][1], pipes[1][0], pipes[2][0], pipes[3][0]]
    marks = {"{STATUS_FD}": "3"}
    if seccomp is not None:  # bwrap reads the filter from a pipe (small: fits its buffer)
        filter_r, filter_w = os.pipe()
        os.write(filter_w, seccomp)
        os.close(filter_w)
        child.append(filter_r)
        marks["{SECCOMP_FD}"] = "4"
    argv = [marks.get(a, a) for a in command]
    slot.reset_peak()
    try:
        monitor = slot.spawn(argv, env, child)
    except BaseException:
        for fd in ours:
            os.close(fd)
        raise
    status: dict = {}
    out: list = []
    err: list[bytes] = []
    threads = [
        threading.Thread(target=_read_status, args=(ours[3], status), daemon=True),
        threading.Thread(target=_read_capped, args=(ours[1], stdout_cap, out), daemon=True),
        threading.Thread(target=_read_tail, args=(ours[2], stderr_keep, err), daemon=True),
    ]
    for t in threads:
        t.start()
    try:  # (a run that dies before reading its spec closes the pipe early)
        view = memoryview(stdin)
        while view:
            view = view[os.write(ours[0], view) :]
    except BrokenPipeError:
        pass
    finally:
        os.close(ours[0])
    exited = _wait_pidfd(monitor, timeout_s)
    init = status.get("pidfd")
    # The init first (its namespace dies with it, and bwrap's monitor reaps it and exits), the
    # monitor only if it does not (e.g. the init never started).
    for pidfd, grace in ((init, 2.0), (monitor, 5.0)):
        if pidfd is not None:
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if _wait_pidfd(monitor, grace):
                break
    for t in threads:
        t.join(timeout=2)
    for pidfd in (init, monitor):
        if pidfd is not None:
            os.close(pidfd)
    slot.sweep()
    peak = slot.cgroups.peak_mb(slot.dirs) if slot.cgroups else None
    rc: int | None = None
    if exited:
        code = status.get("exit-code")
        # bwrap reports a command killed by signal N as 128 + N; no report: bwrap itself died
        rc = -9 if code is None else (128 - code if code > 128 else code)
    stdout, overflow = out[0] if out else (b"", False)
    return Run(rc, stdout, (err[0] if err else b"").decode(errors="replace"), overflow, peak)


def _wait_pidfd(pidfd: int, timeout_s: float) -> bool:
    """True when the process exited within timeout_s."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


def _read_status(fd: int, status: dict) -> None:
    """bwrap's status documents, one a line: the first names the namespace's init (a pidfd to it
    is opened at once, so the pid cannot be reused before the kill), the last its exit code.
    Only bwrap writes here: the fd is not passed to the program."""
    with os.fdopen(fd, "rb") as f:
        for i, line in enumerate(f):
            try:
                doc = json.loads(line)
                if i == 0:
                    status["pidfd"] = os.pidfd_open(int(doc["child-pid"]))
                elif type(doc.get("exit-code")) is int:
                    status["exit-code"] = doc["exit-code"]
            except (ValueError, KeyError, TypeError, AttributeError, OSError):
                pass


def _read_capped(fd: int, cap: int, out: list) -> None:
    chunks, n, overflow = [], 0, False
    with os.fdopen(fd, "rb") as stream:
        while chunk := stream.read(65536):
            if not overflow:
                n += len(chunk)
                if n > cap:
                    overflow, chunks = True, []
                else:
                    chunks.append(chunk)
    out.append((b"".join(chunks), overflow))


def _read_tail(fd: int, keep: int, out: list[bytes]) -> None:
    buf = b""
    with os.fdopen(fd, "rb") as stream:
        while chunk := stream.read(65536):
            buf = (buf + chunk)[-keep:]
    out.append(buf)


def default_python() -> str:
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
