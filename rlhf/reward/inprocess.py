"""reward.fn=task for a built-in task whose reward is trusted, pure Python: scored in the reward
actor's own process, with no worker-process round trip per sample.

Only tasks that declare `Task.reward_in_process` (the exact-match tasks) come here; the others
(fractions: math-verify times itself out with signals, which need a process's main thread, and a
Ray actor method does not run on it; reasoning-gym's third-party scorers) stay in killable
workers (pool.py). A reward that raises is accounted as in a worker: that sample gets
"exception: ..." and the actor's fallback, the rest of the batch is scored.
"""

from __future__ import annotations

from typing import Any

from rlhf.reward.pool import Outcome, describe
from rlhf.tasks import get_task, task_reward


def runs_in_process(fn: str, task_name: str) -> bool:
    """True when `fn` is the built-in task's reward and that task allows in-process scoring."""
    return fn == "task" and get_task(task_name).reward_in_process


class InProcessScorer:
    """`score(samples)` -> one Outcome per sample, each a direct call of the task's reward."""

    def __init__(self, task_name: str):
        self._reward = task_reward(task_name)

    def score(self, samples: list[Any]) -> list[Outcome]:
        out: list[Outcome] = []
        for s in samples:
            try:
                out.append((self._reward(s.prompt, s.response, s.answer, **s.fields), None))
            except Exception as e:  # a bug in a built-in costs its sample, as in a worker
                out.append((None, describe(e)))
        return out
