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
    env = {
        "env_vars": {
            "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "RLHF_TEST_REWARD_PIDS": str(pid_log),
        }
    }
    group = RewardGroup(
        RewardConfig(fn="reward_group_fns:parent_pid", num_actors=2), "addition", slots, env
    )
    chunks = [[Sample(group_id=c, prompt="1+1=", response="2", answer="2")] * 3 for c in range(4)]
    refs = [group.submit(chunk) for chunk in chunks]
    owners = [{s.reward for s in part} for part in ray_local.get(refs)]
    assert all(len(o) == 1 for o in owners)  # a chunk is scored by one actor
    owners = [o.pop() for o in owners]
    assert owners[0] == owners[2] != owners[1] == owners[3]  # alternating over the 2 actors
    for a in group.actors:
        ray_local.kill(a)

    hung = RewardGroup(
        RewardConfig(fn="reward_group_fns:hang_and_log", num_actors=1, timeout_s=600, workers=2),
        "addition",
        slots[:1],
        env,
    )
    hung.submit([Sample(group_id=0, prompt="1+1=")] * 2)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (
        not pid_log.exists() or len(pid_log.read_text().split()) < 2
    ):
        time.sleep(0.1)
    workers = [int(p) for p in pid_log.read_text().split()]
    assert len(workers) == 2 and all(_alive(p) for p in workers)
    ray_local.kill(hung.actors[0])  # SIGKILL of the actor process: no cleanup code runs
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]


def test_generative_judge_in_a_reward_actor(ray_local, slots, tiny_model_path):
    """reward.kind=judge: the tiny addition model, asked '{prompt}{response}' (the response
    empty), judges; its greedy answer
    parsed as the score equals transformers' greedy generation of the same model. An output
    without a score is an error for that sample, not a silent 0."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.config import JudgeConfig

    judge = JudgeConfig(
        path=tiny_model_path,
        template="{prompt}{response}",
        score_pattern=r"^(\d+)",
        scale=1.0,
        max_new_tokens=4,
        max_model_len=64,
    )
    group = RewardGroup(
        RewardConfig(kind="judge", judge=judge, fallback=-1.0),
        "addition",
        slots[:1],
        {"env_vars": {"VLLM_LOGGING_LEVEL": "WARNING"}},
    )
    prompts = ["1+2=", "3+3=", "6+5=", "0+0=", "4+2=", "5+6="]
    out = ray_local.get(
        group.submit([Sample(group_id=i, prompt=p, response="") for i, p in enumerate(prompts)])
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_path)
    with torch.no_grad():
        for s in out:
            ids = tok(s.prompt, return_tensors="pt", add_special_tokens=False).input_ids
            gen = model.generate(
                ids,
                max_new_tokens=4,
                do_sample=False,
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            text = tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
            assert s.info["judge_output"] == text
            lead = text[: len(text) - len(text.lstrip("0123456789"))]  # what ^(\d+) captures
            if lead:
                assert s.reward == float(lead) and "reward_error" not in s.info
            else:
                assert s.reward == -1.0 and "JudgeParseError" in s.info["reward_error"]
    assert sum("reward_error" not in s.info for s in out) >= 3  # the warmed-up model mostly answers
    ray_local.kill(group.actors[0])
