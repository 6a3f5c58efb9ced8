"""Chaos soak: one GRPO run (tiny model, default task, rollout.max_staleness=1,
rollout.filter_groups=true) hit at seeded random steps by every fault the run must survive, then
checked against an uninterrupted reference run of the same seed.

Faults (each at a step drawn from --seed):
- engine:  kill -9 of the vLLM engine actor (Ray restarts it, the trainer re-syncs it, the
           pipeline re-issues what it held);
- reward:  kill -9 of an idle reward worker process (pebble replaces it);
- driver:  SIGKILL of the driver (its orphaned Ray cluster is then killed, as a scheduler
           would), then the same command again: it resumes from the last complete checkpoint;
- sigterm: SIGTERM (preemption): the run finishes the step, saves, exits 143; then resumed;
- nan:     a NaN policy loss on learner rank 0 at a chosen step (tests/integration/nan_loss.py,
           `algo.policy_loss=nan_loss:nan_on_calls`); the update is skipped on every rank. The
           reference run gets the same NaN at the same step, so that step stays comparable.

Checks (`check`): every step logged once; every prompt id the ledger closed is closed once
(trained, filtered or expired) and none is lost (each id the data cursor handed out is closed,
or open in the final checkpoint); every step trains prompts_per_step groups at most 1 version
stale; the NaN steps' updates are skipped; the engine restarted once per kill; no process of any
segment (Ray's, vLLM's, the reward workers) is alive at the end; and every step through
`comparable_through` equals the reference: its ledger rows (prompt ids, status, weight version,
rewards, digest of the response tokens; `attempts` aside, 2 for a re-issued prompt) and its
learned metrics (all but timing/perf/fault).

Which steps are comparable. Driver kills and SIGTERM resume bit-exactly and the NaN skip is in
both runs, so the stop faults end nothing; an idle reward worker's death changes nothing (a kill
that lands mid-call gives a sample reward.fallback, reward/crashes > 0: equality ends before
that step). An engine kill, fired once step `at` is logged, is noticed either in the rollout
phase of step at + 1 (or in the checkpoint drain before it) or in the weight sync ending step
at + 1. What the dead engine held was sent after the sync to version `at`, and an actor runs
its calls in order, so the reference generated it with `at` too. Noticed in the rollout phase,
it is re-issued with the same seeds under `at`: the run equals the reference to the end.
Noticed by the sync, it (the next step's first round) is re-issued under at + 1: step at + 1
is still equal, at + 2 on is another trajectory (only the bookkeeping is checked there). The
trainer's `fault: rollout worker` log line says which (`comparable_through`). Engine kills are
planned after every stop fault, so a resume never replays a post-kill trajectory.

    python scripts/chaos.py --seed 1  # the long version: 400 steps, each fault 3 times
    python scripts/chaos.py --steps 60 --repeat 1 --workdir /tmp/chaos  # a shorter soak
    python scripts/chaos.py --ci --json summary.json  # tests/reliability/test_chaos.py

Prints one summary line per fault and a final summary (JSON with --json).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, launch_train  # noqa: E402

VOLATILE = ("timing/", "perf/", "fault/", "learner/lr_")
# Ledger keys that record the faults themselves (a re-issued prompt has attempts 2), not what
# was trained: checked on their own, not compared with the reference.
LEDGER_BOOKKEEPING = ("attempts",)
RUN_FAULTS = ("engine", "reward")  # injected into a live segment, which goes on
STOP_FAULTS = ("driver", "sigterm")  # end the segment; the same command resumes
TOLERANCE = 1e-6
PROMPTS_PER_STEP = 16  # +experiment=grpo's


def base_args(steps: int) -> list[str]:
    return [
        "+experiment=grpo",
        f"trainer.total_steps={steps}",
        "trainer.save_every=2",
        "trainer.save_every_min=0",
        "trainer.save_final=true",  # the final checkpoint holds the prompts open at the end
        "rollout.max_staleness=1",
        "rollout.filter_groups=true",
        f"rollout.prompts_per_step={PROMPTS_PER_STEP}",
        "algo.policy_loss=nan_loss:nan_on_calls",
        # The task's exact-match rule by dotted path: a user function, so it runs in the
        # killable worker processes the reward fault kills (the built-in task reward itself
        # runs in the reward actor's process); the rewards are the same.
        "reward.fn=rlhf.reward.rules:exact_match",
        "eval=off",
    ]


def make_plan(seed: int, steps: int, faults: list[str]) -> list[tuple[int, str]]:
    """(step, fault) pairs at distinct seeded random steps in [2, steps - 1], by step. A
    fault fires once that step is logged. Engine kills go after every stop fault and NaN, so
    the resumed segments stay comparable with the reference (see the module docstring)."""
    rng = random.Random(seed)
    early = [f for f in faults if f != "engine"]
    late = [f for f in faults if f == "engine"]
    room = list(range(2, steps))
    if len(room) < len(faults):
        raise SystemExit(f"--steps {steps} has too few steps for {len(faults)} faults")
    picked = sorted(rng.sample(room, len(faults)))
    rng.shuffle(early)
    return list(zip(picked, early + late))


# ------------------------------------------------------------------------------ the run folder


def rows(run: Path, name: str = "metrics.jsonl") -> list[dict]:
    path = run / name
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(x) for x in text.splitlines(keepends=True) if x.endswith("\n") and x.strip()]


def learned(run_rows: list[dict]) -> list[dict]:
    return [
        {k: v for k, v in r.items() if not k.startswith(VOLATILE) and not k.endswith("_s")}
        for r in run_rows
    ]


def checkpoints(run: Path) -> list[int]:
    folder = run / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name[5:]) for p in folder.iterdir() if p.name.startswith("step-"))


def ledger_row(r: dict) -> dict:
    return {k: v for k, v in r.items() if k not in LEDGER_BOOKKEEPING}


def recoveries(text: str) -> list[str]:
    """The trainer's 'fault: rollout worker N died (REASON)' lines of a segment's log, in order:
    REASON starts with 'during weight sync' when the death was noticed by a weight sync."""
    return [
        line[line.index("fault: ") :]
        for line in text.splitlines()
        if "fault: rollout worker " in line and " died (" in line
    ]


def same(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k, v in b.items():
        w = a[k]
        if isinstance(v, float) and isinstance(w, float):
            if abs(w - v) > TOLERANCE * max(1.0, abs(v)):
                return False
        elif w != v:
            return False
    return True


# ------------------------------------------------------------------------------ processes


def tree(pid: int) -> list:
    import psutil

    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def titled(procs: list, prefix: str) -> list:
    out = []
    for p in procs:
        try:  # a killed process lingers as a zombie until its parent reaps it
            if p.status() != "zombie" and " ".join(p.cmdline()).startswith(prefix):
                out.append(p)
        except Exception:  # exited meanwhile
            pass
    return out


def alive(procs) -> list[str]:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != "zombie":
                out.append(f"{p.pid} {' '.join(p.cmdline())[:80]}")
        except Exception:
            pass
    return out


class Segment:
    """One launch of the run's command; remembers every process it saw (for the final check)."""

    def __init__(self, run: Path, args: list[str], nan_calls: list[int], index: int):
        self.run, self.index = run, index
        self.log_path = run.parent / f"{run.name}.seg{index}.log"
        env = {
            "HF_HUB_OFFLINE": "1",
            "RLHF_TEST_NAN_CALLS": ",".join(map(str, nan_calls)),
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT / "tests" / "integration"), os.environ.get("PYTHONPATH", "")]
            ),
        }
        run.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "w")
        self.proc = launch_train(
            args, run, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.seen: dict[int, object] = {}
        self.resumed_at: int | None = None

    def text(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def snapshot(self) -> list:
        procs = tree(self.proc.pid)
        for p in procs:
            self.seen.setdefault(p.pid, p)
        return procs

    def wait_step(self, step: int, timeout_s: float = 600.0) -> None:
        """Until `step` is logged by this segment (a resumed one first truncates the old rows)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"segment {self.index} exited ({self.proc.returncode}) before step {step}:\n"
                    + self.text()[-3000:]
                )
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"segment {self.index}: timed out waiting for step {step}")
            self.snapshot()
            if self.ready() and len(rows(self.run)) >= step:
                return
            time.sleep(0.05)

    def ready(self) -> bool:
        if self.index == 0:
            return True
        if self.resumed_at is None:
            for line in self.text().splitlines():
                if line.startswith("resumed from ") and " at step " in line:
                    self.resumed_at = int(line.rsplit(" ", 1)[1])
            if self.resumed_at is None:
                return False
        # The trainer truncates metrics.jsonl to the resumed step right after saying so.
        if not getattr(self, "_truncated", False):
            self._truncated = len(rows(self.run)) == self.resumed_at
        return self._truncated

    def finish(self, timeout_s: float = 600.0) -> int:
        while self.proc.poll() is None and timeout_s > 0:
            self.snapshot()
            time.sleep(0.2)
            timeout_s -= 0.2
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait()


# ------------------------------------------------------------------------------ faults


def kill_engine(seg: Segment) -> str:
    [engine] = titled(seg.snapshot(), "ray::VllmEngine")
    engine.kill()
    return f"pid {engine.pid}"


def kill_reward_worker(seg: Segment) -> str:
    """kill -9 of one reward worker while it is idle (sleeping), so no sample loses its reward."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for actor in titled(seg.snapshot(), "ray::RewardActor"):
            for worker in actor.children():
                try:
                    if worker.status() == "sleeping":
                        worker.kill()
                        return f"pid {worker.pid} (of RewardActor {actor.pid})"
                except Exception:
                    pass
        time.sleep(0.01)
    raise RuntimeError("no idle reward worker process found")


def kill_driver(seg: Segment) -> str:
    procs = seg.snapshot()
    seg.proc.kill()
    seg.proc.wait(timeout=30)
    time.sleep(1.0)
    orphans = alive(procs[1:])
    for p in procs[1:]:  # the driver's Ray cluster, orphaned: what a scheduler's cleanup kills
        try:
            p.kill()
        except Exception:
            pass
    return f"{len(orphans)} orphaned Ray processes killed"


def run_chaos(run: Path, steps: int, plan: list[tuple[int, str]], log=print) -> dict:
    nan_steps = [s for s, f in plan if f == "nan"]
    args = base_args(steps)
    segments = [Segment(run, args, nan_steps, 0)]
    injected, recovery = [], collections.defaultdict(list)
    for at, fault in plan:
        if fault == "nan":
            continue  # in the loss: nothing to do from outside
        seg = segments[-1]
        seg.wait_step(at)
        t0 = time.monotonic()
        if fault == "engine":
            what = kill_engine(seg)
        elif fault == "reward":
            what = kill_reward_worker(seg)
        elif fault == "driver":
            what = kill_driver(seg)
        else:
            seg.proc.send_signal(signal.SIGTERM)
            code = seg.finish(timeout_s=120)
            if code != 143:
                raise RuntimeError(f"SIGTERM: exit {code}, not 143:\n{seg.text()[-3000:]}")
            what = f"exit 143 after step {len(rows(run))}"
        logged = len(rows(run))
        if fault in STOP_FAULTS:
            resume = max(checkpoints(run), default=0)
            calls = [s - resume for s in nan_steps if s > resume]
            segments.append(Segment(run, args, calls, len(segments)))
            what += f"; resumed from step {resume}"
        # Recovery: from the fault to the first step past the one logged when it hit.
        segments[-1].wait_step(logged + 1)
        recovery[fault].append(time.monotonic() - t0)
        injected.append(
            {"step": at, "fault": fault, "what": what, "recovery_s": recovery[fault][-1]}
        )
        log(f"fault {fault} at step {at}: {what}; next step after {recovery[fault][-1]:.1f}s")
    code = segments[-1].finish()
    if code != 0:
        raise RuntimeError(f"last segment exit {code}:\n{segments[-1].text()[-3000:]}")
    time.sleep(2.0)  # Ray's agents exit a moment after the driver
    left = alive([p for s in segments for p in s.seen.values()])
    # Engine kills come after every stop fault (make_plan): all in the last segment.
    engine_recoveries = [line for s in segments for line in recoveries(s.text())]
    return {
        "injected": injected,
        "left_behind": left,
        "segments": len(segments),
        "engine_recoveries": engine_recoveries,
    }


def reference(run: Path, steps: int, nan_steps: list[int]) -> None:
    seg = Segment(run, base_args(steps), nan_steps, 0)
    if seg.finish() != 0:
        raise RuntimeError(f"reference run failed:\n{seg.text()[-3000:]}")


def comparable_through(
    plan: list[tuple[int, str]], engine_recoveries: list[str], crash_steps: list[int], steps: int
) -> int:
    """The last step the chaos run must equal the reference on (see the module docstring).

    An engine killed once step `at` is logged: the trainer notices the death either in the
    rollout phase of step at + 1 (or the checkpoint drain before it), or in the weight sync
    that ends step at + 1. Before that sync the engines serve version `at`, and everything the
    dead engine held was sent after the sync to `at` (an actor runs its calls in order, so every
    call sent before that sync had finished), so the reference generated it with `at` as well:
    a recovery in the rollout phase re-issues it with the same seeds and the same weights, and
    the run stays equal to the reference to the end. A recovery in the sync re-issues it (the
    next step's first round, drawn under `at`) with version at + 1: step at + 2 onwards is
    another trajectory; step at + 1 itself is equal either way (its samples were generated, or
    re-issued under `at`, before that sync). A reward call that crashed (reward/crashes > 0 in
    step s) gave a sample its fallback reward: equality ends at s - 1."""
    engine_steps = [s for s, f in plan if f == "engine"]
    if len(engine_recoveries) != len(engine_steps):
        raise RuntimeError(
            f"{len(engine_steps)} engine kills but {len(engine_recoveries)} recoveries in the "
            f"logs: {engine_recoveries}"
        )
    ends = [steps]
    for at, line in zip(engine_steps, engine_recoveries):
        if "during weight sync" in line:
            ends.append(at + 1)
    ends += [s - 1 for s in crash_steps]
    return min(ends)


def compare(
    run: Path,
    ref: Path,
    plan: list[tuple[int, str]],
    steps: int,
    engine_recoveries: list[str] | None = None,
) -> dict:
    ledger, ref_ledger = rows(run, "ledger.jsonl"), rows(ref, "ledger.jsonl")
    closed = collections.Counter(r["prompt_id"] for r in ledger)
    trained = [r["prompt_id"] for r in ledger if r["status"] == "trained"]
    ref_closed = {r["prompt_id"] for r in ref_ledger}
    metrics, ref_metrics = rows(run), rows(ref)
    # The final checkpoint's open ledger records: the prompts in flight when the run ended.
    final = json.loads(
        (run / "checkpoints" / f"step-{steps:06d}" / "trainer_state.json").read_text()
    )
    still_open = {e["prompt_id"] for e in final["pipeline"]["ledger"]}
    crash_steps = [r["step"] for r in metrics if r.get("reward/crashes", 0) > 0]
    through = comparable_through(plan, engine_recoveries or [], crash_steps, steps)
    by_step = collections.defaultdict(list)
    for r in ledger:
        by_step[r["step"]].append(r)
    ref_by_step = collections.defaultdict(list)
    for r in ref_ledger:
        ref_by_step[r["step"]].append(r)
    equal = []
    for got, want in zip(learned(metrics), learned(ref_metrics)):
        s = want["step"]
        rows_equal = len(by_step[s]) == len(ref_by_step[s]) and all(
            same(ledger_row(a), ledger_row(b)) for a, b in zip(by_step[s], ref_by_step[s])
        )
        if got["step"] == s and same(got, want) and rows_equal:
            equal.append(s)
    return {
        "steps": [r["step"] for r in metrics],
        "prompts_closed": len(closed),
        "trained_twice": sum(1 for n in closed.values() if n > 1),
        "prompts_trained": len(trained),
        "prompts_filtered": sum(1 for r in ledger if r["status"] == "filtered"),
        "prompts_expired": sum(1 for r in ledger if r["status"] == "expired"),
        # drawn (ids are the data cursor's, from 0) but neither closed nor open at the end
        "prompts_lost": sorted(
            set(range(max([*closed, *still_open]) + 1)) - set(closed) - still_open
        ),
        "prompts_open_at_end": len(still_open),
        "closed_as_reference": set(closed) == ref_closed,
        "reissued_trained": sum(
            1 for r in ledger if r["status"] == "trained" and r["attempts"] > 1
        ),
        "reference_attempts_max": max((r["attempts"] for r in ref_ledger), default=0),
        "staleness_max": max(
            (r["staleness"] for r in ledger if r["status"] == "trained"), default=0
        ),
        "trained_per_step": sorted(
            collections.Counter(r["step"] for r in ledger if r["status"] == "trained").values()
        ),
        "skipped_updates": [r["step"] for r in metrics if r.get("learner/skipped_updates")],
        "restarts": metrics[-1].get("fault/restarts") if metrics else None,
        "reward_crashes": sum(r.get("reward/crashes", 0) for r in metrics),
        "comparable_through": through,
        "equal_steps": equal,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0, help="draws the fault steps")
    ap.add_argument(
        "--repeat", type=int, default=3, help="each fault this many times (engine: at most 3)"
    )
    ap.add_argument("--ci", action="store_true", help="the short plan of tests/reliability")
    ap.add_argument("--workdir", default=None, help="default: a fresh temporary folder")
    ap.add_argument("--json", default=None, help="write the summary here too")
    args = ap.parse_args(argv)
    if args.ci:
        args.steps, args.repeat = 9, 1
    faults = ["reward", "driver", "sigterm", "nan"] * args.repeat + ["engine"] * args.repeat
    plan = make_plan(args.seed, args.steps, faults)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="rlhf-chaos-"))
    print(f"plan (step, fault): {plan}; runs in {work}", flush=True)
    t0 = time.monotonic()
    reference(work / "reference", args.steps, [s for s, f in plan if f == "nan"])
    t_ref = time.monotonic() - t0
    out = run_chaos(work / "chaos", args.steps, plan, log=lambda m: print(m, flush=True))
    out.update(
        compare(work / "chaos", work / "reference", plan, args.steps, out["engine_recoveries"])
    )
    out.update(
        plan=plan,
        seed=args.seed,
        reference_s=round(t_ref, 1),
        chaos_s=round(time.monotonic() - t0 - t_ref, 1),
        workdir=str(work),
    )
    c = out["comparable_through"]
    print(
        f"faults injected: {collections.Counter(f for _, f in plan)}; recovery s: "
        + ", ".join(f"{i['fault']}@{i['step']} {i['recovery_s']:.1f}" for i in out["injected"])
    )
    print(
        f"prompts closed {out['prompts_closed']} (trained {out['prompts_trained']}, filtered "
        f"{out['prompts_filtered']}, expired {out['prompts_expired']}); lost "
        f"{len(out['prompts_lost'])}; trained twice {out['trained_twice']}; skipped updates at "
        f"{out['skipped_updates']}; steps equal to the reference {len(out['equal_steps'])} "
        f"(comparable 1..{c}: {sum(1 for s in out['equal_steps'] if s <= c)}/{c}); left behind "
        f"{len(out['left_behind'])}; wall {out['reference_s']}s reference + {out['chaos_s']}s"
    )
    problems = check(out, args.steps, plan)
    for p in problems:
        print(f"FAILED: {p}")
    if args.json:
        Path(args.json).write_text(json.dumps({**out, "problems": problems}, indent=1))
    return 1 if problems else 0


def check(out: dict, steps: int, plan: list[tuple[int, str]]) -> list[str]:
    """What must hold after a chaos run (`out`: run_chaos + compare); the problems found."""
    c, faults = out["comparable_through"], collections.Counter(f for _, f in plan)
    stops = faults["driver"] + faults["sigterm"]
    nan_steps = sorted(s for s, f in plan if f == "nan")
    problems = [
        f"{what}: {got!r}, expected {want!r}"
        for what, got, want in (
            ("steps logged", out["steps"], list(range(1, steps + 1))),
            (
                "faults injected",
                sorted(i["fault"] for i in out["injected"]),
                sorted(f for _, f in plan if f != "nan"),
            ),
            ("segments", out["segments"], 1 + stops),
            ("prompts closed twice", out["trained_twice"], 0),
            ("prompts lost", out["prompts_lost"], []),
            ("trained groups per step", set(out["trained_per_step"]), {PROMPTS_PER_STEP}),
            ("skipped (NaN) updates", out["skipped_updates"], nan_steps),
            ("engine restarts", out["restarts"], float(faults["engine"])),
            ("attempts in the reference", out["reference_attempts_max"], 1),
            ("processes left behind", out["left_behind"], []),
            (
                "unequal comparable steps",
                [s for s in range(1, c + 1) if s not in out["equal_steps"]],
                [],
            ),
        )
        if got != want
    ]
    if out["staleness_max"] > 1:
        problems.append(f"a trained group {out['staleness_max']} versions old (bound 1)")
    if c == steps and not out["closed_as_reference"]:
        problems.append("the prompt ids closed differ from the reference's")
    return problems


if __name__ == "__main__":
    sys.exit(main())
