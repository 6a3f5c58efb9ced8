"""Chaos soak, short: one GRPO run with rollout.max_staleness=1 and rollout.filter_groups=true
takes, at seeded random steps (scripts/chaos.py --ci, seed 0), kill -9 of an idle reward
worker, SIGTERM (then resumed), SIGKILL of the driver (then resumed), a NaN policy loss on
learner rank 0 and kill -9 of the vLLM engine; an uninterrupted run of the same seed with the
same NaN step is the reference.

What must hold at the end:
- the ledger closes every drawn prompt once (trained, filtered or expired): none twice, and
  none lost (every id the data cursor handed out is closed or open in the final checkpoint);
- every step through `comparable_through` equals the reference (ledger rows: prompt ids,
  rewards, response digests; metrics but timing/perf/fault): the SIGTERM and driver-kill
  resumes are exact, the NaN skip is in both runs, an idle reward worker's death changes
  nothing. After the engine kill (the last fault, by design) the runs part: the restarted engine
  regenerates the prompts it held with the weights current at the restart, newer than those
  the reference generated them with (staleness 1), so later steps are a different trajectory;
- no process of any segment (Ray, vLLM, reward workers) is alive afterwards.

scripts/chaos.py runs the long version (more steps, every fault several times, --seed).
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import time

import pytest
from helpers import ROOT, rows

pytestmark = pytest.mark.integration


def test_chaos_soak_loses_nothing_and_replays_the_reference(tmp_path):
    summary = tmp_path / "summary.json"
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "scripts/chaos.py", "--ci", "--workdir", str(tmp_path), "--json", summary],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - t0
    assert summary.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(summary.read_text())
    print(proc.stdout[-1500:], f"wall {wall:.1f}s")

    faults = collections.Counter(i["fault"] for i in out["injected"])
    assert faults == {"reward": 1, "driver": 1, "sigterm": 1, "engine": 1}, out["injected"]
    [nan_step] = [s for s, f in out["plan"] if f == "nan"]
    steps = max(s for s, _ in out["plan"]) + 1
    assert out["steps"] == list(range(1, steps + 1))
    assert out["segments"] == 3  # two resumes

    # The ledger, read here again: once each, none lost.
    ledger = rows(tmp_path / "chaos", "ledger.jsonl")
    closed = collections.Counter(r["prompt_id"] for r in ledger)
    assert max(closed.values()) == 1, "a prompt was closed twice"
    assert out["trained_twice"] == 0 and out["prompts_lost"] == []
    trained = [r for r in ledger if r["status"] == "trained"]
    assert len(trained) == steps * 16  # prompts_per_step groups in every step
    assert all(r["staleness"] <= 1 for r in trained)

    # The NaN step was skipped, in both runs alike; the engine came back once.
    assert out["skipped_updates"] == [nan_step]
    assert out["restarts"] == 1

    c = out["comparable_through"]
    [engine_step] = [s for s, f in out["plan"] if f == "engine"]
    assert c == engine_step  # no reward sample crashed
    assert nan_step <= c
    assert [s for s in out["equal_steps"] if s <= c] == list(range(1, c + 1))

    assert out["left_behind"] == []
    assert proc.returncode == 0, proc.stdout[-3000:]
