"""``guess_number``: a feedback task. The environment holds a secret number (the prompt row's
``answer``) in ``low..high``; each model turn is a guess, answered ``higher`` or ``lower`` (or
``invalid`` for a turn that is not a number in range) until the guess is right (reward 1.0,
success) or ``max_guesses`` guesses were used (reward 0.0). With 0..9 and 4 guesses a binary
search always wins and the first guess alone wins one time in ten, so success needs the
feedback of earlier turns.
"""

from __future__ import annotations

from typing import Any

from rlhf.envs.base import Message, StepResult, TextEnv


class GuessNumberEnv(TextEnv):
    def __init__(self, low: int = 0, high: int = 9, max_guesses: int = 4):
        if not low <= high or max_guesses < 1:
            raise ValueError(f"need low <= high and max_guesses >= 1: {low}, {high}, {max_guesses}")
        self.low, self.high, self.max_guesses = low, high, max_guesses

    def reset(self, task: dict[str, Any], seed: int) -> tuple[list[Message], dict[str, Any]]:
        self.secret = int(task["answer"])
        if not self.low <= self.secret <= self.high:
            raise ValueError(f"secret {self.secret} outside {self.low}..{self.high}")
        self.guesses = 0
        return [{"role": "user", "content": task["prompt"]}], {}

    def step(self, action: str) -> StepResult:
        self.guesses += 1
        text = action.strip()
        guess = int(text) if text.isdigit() else None
        if guess == self.secret:
            return [], 1.0, True, False, {"success": True}
        if self.guesses >= self.max_guesses:
            return [], 0.0, True, False, {"success": False}
        if guess is None or not self.low <= guess <= self.high:
            feedback = "invalid"
        else:
            feedback = "higher" if self.secret > guess else "lower"
        return [{"role": "user", "content": feedback}], 0.0, False, False, {}


def expert(messages: list[Message], low: int = 0, high: int = 9) -> str:
    """The scripted expert: binary search over what the feedback so far leaves open."""
    lo, hi, guess = low, high, None
    for m in messages:
        if m["role"] == "assistant":
            guess = int(m["content"])
        elif m["role"] == "user" and guess is not None:
            if m["content"] == "higher":
                lo = guess + 1
            elif m["content"] == "lower":
                hi = guess - 1
    return str((lo + hi) // 2)
