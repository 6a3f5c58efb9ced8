"""A reward function that injects the fault named by the row's `fault` column and logs
"<pid> <fault>" to $RLHF_TEST_REWARD_LOG before doing so, so the test can compare the run's
counters with what really happened and check that no worker process is left behind."""

import math
import os
import time


def faulty(prompt: str, completion: str, answer: str = "", fault: str = "", **_) -> float:
    with open(os.environ["RLHF_TEST_REWARD_LOG"], "a") as f:
        f.write(f"{os.getpid()} {fault or 'ok'}\n")
    if fault == "exit":
        os._exit(7)  # the worker process dies mid-call
    if fault == "hang":
        while True:  # never returns, ignores nothing: only a kill ends it
            time.sleep(1)
    if fault == "sysexit":
        raise SystemExit(3)
    if fault == "raise":
        raise RuntimeError("reward service exploded")
    if fault == "nan":
        return math.nan
    return float(completion.strip() == answer)
