"""A calculator environment that fails on purpose for chosen episodes (by seed): its first step
raises, hangs or exits its process. Registered on import as `faulty_calculator`, so a run names
it `env.id=env_faults:faulty_calculator` (this folder on PYTHONPATH)."""

from __future__ import annotations

import os
import time

from rlhf.envs.base import register
from rlhf.envs.calculator import CalculatorEnv


class FaultyCalculator(CalculatorEnv):
    def __init__(self, faults: dict | None = None):
        self.faults = {int(k): v for k, v in (faults or {}).items()}  # seed -> raise|hang|exit

    def reset(self, task, seed):
        self.fault = self.faults.get(int(seed), "")
        return super().reset(task, seed)

    def step(self, action):
        if self.fault == "raise":
            raise RuntimeError("faulty_calculator: a bug in the environment")
        if self.fault == "hang":
            time.sleep(3600)
        if self.fault == "exit":
            os._exit(7)
        return super().step(action)


register("faulty_calculator", FaultyCalculator)
