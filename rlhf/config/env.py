"""env.*: the text environment of agent runs (rlhf/envs) and the limits of its episodes.

An empty `env.id` keeps today's single-turn prompts. With an id, every request the rollout
pipeline issues is one episode of that environment on the vLLM engine's agent loop
(rlhf/rollout/agent_loop.py). Whether the id is registered is checked with the registry
itself, in rlhf.preflight (it imports the environments); the context budget in root.validate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rlhf.config.checks import one_of, positive

ISOLATIONS = ("thread", "process")


@dataclass
class EnvConfig:
    """Agent environment: which one, and the limits that cut its episodes (cut = truncated)."""

    id: str = ""  # "" = single-turn prompts; else a registered env id (or 'package.module:id')
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to rlhf.envs.make(id, ...)
    max_turns: int = 4  # model turns per episode
    max_tokens_per_turn: int = 16  # sampled tokens per model turn
    # prompt + every turn + every environment reply; 0 = rollout.vllm.max_model_len
    max_episode_tokens: int = 0
    step_timeout_s: float = 5.0  # per env.reset / env.step; past it the episode is cut (timeout)
    # thread: the env runs in the engine's process (a hung step is abandoned, not killed);
    # process: each episode's env in a process of its own (a hang is killed, a crash contained)
    isolation: str = "thread"
    # Also score the finished transcript with reward.* and add that score to the episode's
    # return (the sum of its turn rewards). False: the environment's rewards are the reward.
    score_transcript: bool = False

    def check(self) -> None:
        if not self.id:
            return
        positive("env.max_turns", self.max_turns)
        positive("env.max_tokens_per_turn", self.max_tokens_per_turn)
        positive("env.max_episode_tokens", self.max_episode_tokens, allow_zero=True)
        positive("env.step_timeout_s", self.step_timeout_s)
        one_of("env.isolation", self.isolation, ISOLATIONS)
