"""Fault injection for the numerical-guard tests: a policy loss (algo.policy_loss=
'nan_loss:nan_on_calls') that is ppo_clip except on the calls listed in RLHF_TEST_NAN_CALLS
(1-based, counted per learner process), where learner rank 0 alone returns NaN."""

import os

import torch.distributed as dist

from rlhf.algos import POLICY_LOSSES

_calls = 0


def nan_on_calls(logprobs, old_logprobs, advantages, mask, p):
    global _calls
    _calls += 1
    loss, metrics = POLICY_LOSSES.get("ppo_clip")(logprobs, old_logprobs, advantages, mask, p)
    chosen = {int(x) for x in os.environ.get("RLHF_TEST_NAN_CALLS", "").split(",") if x}
    if _calls in chosen and dist.get_rank() == 0:
        loss = loss * float("nan")
    return loss, metrics
