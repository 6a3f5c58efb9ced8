"""Throwaway text environments for the agent-loop tests (unit and integration): registered on
import, so `env.id="agent_envs:<id>"` builds them in any process that can import this module."""

from __future__ import annotations

import os
import time

from rlhf.envs.base import TextEnv, register


class CountdownEnv(TextEnv):
    """Replies "<turn digit>+" after every model turn; ends after `turns` turns (success) with
    reward 1.0 on the final step, 0.25 on earlier ones. Faults on request, for chosen seeds."""

    def __init__(self, turns=3, fault="", fault_turn=1, fault_seeds=()):
        self.turns, self.fault, self.fault_turn = turns, fault, fault_turn
        self.fault_seeds = set(fault_seeds)  # the episodes (by seed) that fail

    def reset(self, task, seed):
        self.t, self.seed = 0, seed
        return [{"role": "user", "content": task["prompt"]}], {}

    def step(self, action):
        self.t += 1
        if self.fault and self.t == self.fault_turn and self._faulty():
            if self.fault == "raise":
                raise RuntimeError("env bug")
            if self.fault == "hang":
                # Far past any step timeout in the tests, yet finite: a thread-isolated env's
                # abandoned worker thread keeps pytest's interpreter from exiting until it returns.
                time.sleep(30)
            if self.fault == "exit":
                os._exit(3)
        done = self.t >= self.turns
        info = {"tool_calls": 1, "tool_errors": int(not action), "success": done}
        reward = 1.0 if done else 0.25
        return [{"role": "user", "content": str(self.t % 10) + "+"}], reward, done, False, info

    def _faulty(self) -> bool:
        return self.seed in self.fault_seeds


register("countdown", CountdownEnv)
