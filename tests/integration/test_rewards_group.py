"""RewardGroup on real Ray actors: `submit` sends each chunk to the next actor round-robin;
killing a reward actor mid-call leaves none of its worker processes behind (Ray's raylet reaps a
dead worker's children, and each worker has PR_SET_PDEATHSIG; tests/unit/test_reward_calls.py
checks the latter alone, without Ray)."""

import os
import time
from pathlib import Path

import pytest

from rlhf.batch import Sample
from rlhf.config import RewardConfig
from rlhf.placement import Slot
from rlhf.reward.actor import RewardGroup

pytestmark = pytest.mark.integration
HERE = Path(__file__).resolve().parent


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def slots(ray_local):
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([{"CPU": 0.25}] * 2)
    ray_local.get(pg.ready())
    yield [Slot(pg, i, 0.25, 0.0) for i in range(2)]
    remove_placement_group(pg)


def test_submit_round_robin_and_workers_die_with_their_actor(ray_local, slots, tmp_path):
    pid_log = tmp_path / "pids.log"
    env = {"env_vars": {"PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                        "RLHF_TEST_REWARD_PIDS": str(pid_log)}}
    group = RewardGroup(RewardConfig(fn="reward_group_fns:parent_pid", num_actors=2), "addition",
                        slots, env)
    chunks = [[Sample(group_id=c, prompt="1+1=", response="2", answer="2")] * 3 for c in range(4)]
    refs = [group.submit(chunk) for chunk in chunks]
    owners = [{s.reward for s in part} for part in ray_local.get(refs)]
    assert all(len(o) == 1 for o in owners)  # a chunk is scored by one actor
    owners = [o.pop() for o in owners]
    assert owners[0] == owners[2] != owners[1] == owners[3]  # alternating over the 2 actors
    for a in group.actors:
        ray_local.kill(a)

    hung = RewardGroup(RewardConfig(fn="reward_group_fns:hang_and_log", num_actors=1,
                                    timeout_s=600, workers=2), "addition", slots[:1], env)
    hung.submit([Sample(group_id=0, prompt="1+1=")] * 2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (not pid_log.exists() or
                                           len(pid_log.read_text().split()) < 2):
        time.sleep(0.1)
    workers = [int(p) for p in pid_log.read_text().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    ray_local.kill(hung.actors[0])  # SIGKILL of the actor process: no cleanup code runs
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]
