"""A reward function that misbehaves on purpose, deterministically by prompt, and logs what it
did to $RLHF_TEST_REWARD_LOG so a test can compare the run's counters with reality."""

import math
import os
import time


def flaky(prompt: str, completion: str, answer: str = "", **_) -> float:
    kind = {"1": "raise", "2": "hang", "3": "nan"}.get(prompt[:1], "ok")
    with open(os.environ["RLHF_TEST_REWARD_LOG"], "a") as f:
        f.write(kind + "\n")
    if kind == "raise":
        raise RuntimeError("reward service exploded")
    if kind == "hang":
        time.sleep(3)
    if kind == "nan":
        return math.nan
    return float(completion.strip() == answer)
