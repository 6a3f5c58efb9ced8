"""Reward functions for test_rewards_group.py (imported inside Ray reward actors' workers)."""

import os
import time


def parent_pid(prompt: str, completion: str, answer: str = "", **_) -> float:
    """The pid of the worker's parent, i.e. of the reward actor that forked it."""
    return float(os.getppid())


def hang_and_log(prompt: str, completion: str, answer: str = "", **_) -> float:
    with open(os.environ["RLHF_TEST_REWARD_PIDS"], "a") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(600)
    return 0.0
