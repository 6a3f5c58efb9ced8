"""Reward functions for the reward unit tests; they misbehave on purpose, chosen by prompt.
Each call first records its worker's pid in $RLHF_TEST_REWARD_PIDS (when set)."""

import math
import os
import time


def misbehave(prompt: str, completion: str, answer: str = "", **_) -> float:
    log = os.environ.get("RLHF_TEST_REWARD_PIDS")
    if log:
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {prompt}\n")
    if prompt == "raise":
        raise ValueError("nope")
    if prompt == "hang":
        time.sleep(600)
    if prompt == "nan":
        return math.nan
    if prompt == "str":
        return "1.0"
    if prompt == "exit":
        os._exit(3)
    if prompt == "sysexit":
        raise SystemExit(4)
    if prompt == "interrupt":
        raise KeyboardInterrupt
    return float(completion == answer)


def half(prompt: str, completion: str, answer: str = "", **_) -> float:
    return 0.5
