"""The program run inside the sandbox (its source is passed to `python -I -S -c`; it imports
nothing from rlhf). It holds no secret and decides nothing: it runs the completion's code, then
the calls or stdin cases it was sent, and writes each result as one JSON line to the stdout it
was started with. The program's own prints go to stderr. Whatever the program does to this
harness (patching it, writing to its result stream, exiting early) can only change the values
claimed for its calls; the trusted parent compares them with expected values it never sent.

Before any program code runs: stdin is /dev/null, a fresh anonymous session keyring replaces
the inherited one, and the rlimits in the spec are applied."""

import ctypes
import json
import os
import resource
import sys
import traceback

_KEYCTL = {"x86_64": 250, "aarch64": 219, "ppc64le": 289, "s390x": 280}


def encode(v, depth=0):
    """Tagged JSON of builtin values (exact types, no subclasses); TypeError otherwise."""
    t = type(v)
    if depth > 200:
        raise TypeError("result nested too deeply")
    if v is None or t is bool or t is str:
        return v
    if t is int:
        return {"i": str(v)}
    if t is float:
        return {"f": repr(v)}
    if t is complex:
        return {"c": [repr(v.real), repr(v.imag)]}
    if t is bytes:
        return {"b": v.hex()}
    if t is list:
        return [encode(x, depth + 1) for x in v]
    if t is tuple:
        return {"t": [encode(x, depth + 1) for x in v]}
    if t is set or t is frozenset:
        return {"s" if t is set else "fs": [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"d": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    raise TypeError(f"result of type {t.__name__} is not a builtin value")


def describe(e):
    try:
        return type(e).__name__
    except BaseException:
        return "exception"


def main():
    spec = json.loads(sys.stdin.buffer.read())
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    libc = ctypes.CDLL(None, use_errno=True)
    nr = _KEYCTL.get(os.uname().machine)
    if nr is None or libc.syscall(nr, 1, None) < 0:  # KEYCTL_JOIN_SESSION_KEYRING, anonymous
        sys.exit("sandbox: cannot join a fresh session keyring")
    for name, value in spec["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the program's prints go to stderr

    def emit(record):
        out.write(json.dumps(record) + "\n")
        out.flush()

    try:
        code = compile(spec["code"], "solution.py", "exec")
    except BaseException as e:
        traceback.print_exc()
        emit({"program": describe(e)})
        sys.stderr.flush()
        os._exit(0)
    if spec["mode"] == "io":
        run_io(code, spec["inputs"], spec["out_limit"], emit)
    else:
        run_calls(code, spec["steps"], emit)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0)


def run_calls(code, steps, emit):
    scope = {"__name__": "__main__"}
    try:
        exec(code, scope)
    except BaseException as e:
        traceback.print_exc()
        emit({"program": describe(e)})
        return
    for k, (kind, src) in enumerate(steps):
        try:
            if kind == "exec":
                exec(compile(src, "tests.py", "exec"), scope)
                continue
            value = eval(compile(src, "tests.py", "eval"), scope)
            record = {"k": k, "v": encode(value)}
        except BaseException as e:
            if kind == "exec":
                emit({"setup": k, "e": describe(e)})
                return
            record = {"k": k, "e": describe(e)}
        emit(record)


def run_io(code, inputs, out_limit, emit):
    """Each case in a forked child (so `exit()` and leftover state end with it) with the case's
    input as stdin and a file as stdout."""
    for k, text in enumerate(inputs):
        path_in, path_out = f"/tmp/in-{k}", f"/tmp/out-{k}"
        with open(path_in, "w") as f:
            f.write(text)
        pid = os.fork()
        if pid == 0:
            rc = 1
            try:
                os.dup2(os.open(path_in, os.O_RDONLY), 0)
                os.dup2(os.open(path_out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
                exec(code, {"__name__": "__main__"})
                rc = 0
            except SystemExit as e:
                rc = e.code if type(e.code) is int else (0 if e.code is None else 1)
            except BaseException:
                traceback.print_exc()
            try:
                sys.stdout.flush()
            except BaseException:
                rc = rc or 1
            os._exit(rc & 255)
        _, status = os.waitpid(pid, 0)
        try:
            with open(path_out, "rb") as f:
                got = f.read(out_limit + 1)
        except OSError:
            got = b""
        if len(got) > out_limit:
            emit({"k": k, "e": "output too large"})
            continue
        emit({"k": k, "out": got.decode(errors="replace"), "rc": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    main()
