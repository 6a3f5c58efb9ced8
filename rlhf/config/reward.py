"""reward.*: the reward actors and every scorer's settings."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from rlhf.config.checks import DTYPES, ConfigError, hf_folder, in_range, one_of, positive

REWARD_KINDS = ("fn", "math", "model", "remote", "sandbox", "judge")  # rlhf/reward/actor.py SCORERS
# Metric names the reward actors log themselves (reward/<name>): no component may take them.
RESERVED_METRICS = (
    "mean",
    "std",
    "all_equal_group_frac",
    "errors",
    "timeouts",
    "nans",
    "crashes",
    "retries",
)


@dataclass
class RewardComponent:
    """One weighted term of a composed reward (`reward.components`); each is logged as
    `reward/<name>`. Kinds other than fn read their settings from reward.model/remote/sandbox."""

    name: str = ""  # metric name reward/<name>; empty = the kind (fn: the function's name)
    kind: str = "fn"  # fn | math | model | remote | sandbox | judge
    fn: str = "task"  # kind=fn only: 'task' or 'package.module:function'
    weight: float = 1.0  # the reward is sum(weight * component value)

    def metric_name(self) -> str:
        """reward/<this>: the name, or the kind (fn: the function's own name)."""
        if self.name:
            return self.name
        return self.kind if self.kind != "fn" else self.fn.replace(":", ".").rsplit(".", 1)[-1]


@dataclass
class RewardModelConfig:
    """reward.kind=model: a Hugging Face sequence-classification model scores prompt+response."""

    path: str = ""  # local model folder (config.json, one output label); nothing is downloaded
    batch_size: int = 32  # sequences per forward pass
    max_length: int = 512  # tokens of prompt + response; longer inputs keep their end
    dtype: str = "float32"  # float32 | bfloat16 | float16
    normalize: bool = False  # standardise scores with a running mean/std over all scored samples

    def check(self) -> None:
        hf_folder("reward.model.path", self.path)
        positive("reward.model.batch_size", self.batch_size)
        positive("reward.model.max_length", self.max_length)
        one_of("reward.model.dtype", self.dtype, DTYPES)


@dataclass
class RemoteRewardConfig:
    """reward.kind=remote: POST {prompt, response, answer, fields} as JSON, read a float back."""

    url: str = ""  # http(s) endpoint
    batch_size: int = 1  # samples per POST: 1 sends one object, > 1 a JSON list (reply: a list)
    max_concurrency: int = 8  # requests in flight per reward actor
    timeout_s: float = 10.0  # per request (connect + read)
    max_retries: int = 3  # retries on 5xx, timeouts and connection errors; 4xx is never retried
    backoff_s: float = 0.5  # delay before the first retry; doubles each retry
    api_key_env: str = ""  # name of an env var with a bearer token (the token stays out of configs)

    def check(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError("reward.remote.url", f"must be an http(s):// URL, got {self.url!r}")
        positive("reward.remote.batch_size", self.batch_size)
        positive("reward.remote.max_concurrency", self.max_concurrency)
        positive("reward.remote.timeout_s", self.timeout_s)
        positive("reward.remote.max_retries", self.max_retries, allow_zero=True)
        positive("reward.remote.backoff_s", self.backoff_s, allow_zero=True)
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise ConfigError(
                "reward.remote.api_key_env", f"environment variable {self.api_key_env!r} is not set"
            )


@dataclass
class SandboxConfig:
    """reward.kind=sandbox: run the completion's Python in a bubblewrap sandbox against the row's
    tests (asserts, or stdin/stdout cases); the verdict is computed outside the sandbox
    (rlhf/reward/sandbox/). Reward 1.0 when every test passes."""

    timeout_s: float = 5.0  # wall clock per program; then its whole PID namespace is killed
    cpu_s: int = 2  # RLIMIT_CPU seconds, per process
    memory_mb: int = 512  # the run's cgroup memory limit (all its processes) and RLIMIT_AS
    file_size_mb: int = 8  # RLIMIT_FSIZE; also the cap on a run's results / a case's stdout
    max_processes: int = 32  # the run's cgroup pids.max (its own budget, not shared)
    max_output_kb: int = 64  # stderr kept per program (diagnostics); the rest is discarded
    concurrency: int = 2  # programs run at once per reward actor
    python: str = ""  # interpreter; empty = /usr/bin/python3 when present, else this one
    tests_key: str = "tests"  # the dataset column: asserts (code or lines) or stdin/stdout cases
    # Run without per-run cgroups where they cannot be created (a non-root trainer without a
    # delegated cgroup): memory and processes are then limited per process / per user only.
    # Off: the sandbox fails closed instead.
    allow_no_cgroups: bool = False

    def check(self) -> None:
        for name in (
            "timeout_s",
            "cpu_s",
            "memory_mb",
            "file_size_mb",
            "max_processes",
            "max_output_kb",
            "concurrency",
        ):
            positive(f"reward.sandbox.{name}", getattr(self, name))
        if self.python and not os.access(self.python, os.X_OK):
            raise ConfigError("reward.sandbox.python", f"{self.python!r} is not an executable")


@dataclass
class JudgeConfig:
    """reward.kind=judge: a vLLM engine in the reward actor answers a judge prompt per sample;
    the score is parsed from its greedy output (rlhf/reward/judge.py)."""

    path: str = ""  # local HF causal-LM folder of the judge
    # Fields: {prompt}, {response}, {answer}.
    template: str = "Rate the answer from 0 to 10.\nQuestion: {prompt}\nAnswer: {response}\nScore:"
    score_pattern: str = "(-?\\d+(?:\\.\\d+)?)"  # regex; its first group is the score
    scale: float = 10.0  # reward = parsed score / scale
    max_new_tokens: int = 8  # judge output tokens
    max_model_len: int = 1024  # the judge engine's context (prompt + output)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gpu_memory_utilization: float = 0.1  # on CPU: share of host memory for the KV cache

    def check(self) -> None:
        hf_folder("reward.judge.path", self.path)
        try:
            self.template.format(prompt="", response="", answer="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                "reward.judge.template", f"fields are {{prompt}}, {{response}}, {{answer}}: {e!r}"
            ) from e
        if "{response}" not in self.template:
            raise ConfigError("reward.judge.template", "must contain {response}")
        try:
            groups = re.compile(self.score_pattern).groups
        except re.error as e:
            raise ConfigError("reward.judge.score_pattern", f"not a regex: {e}") from e
        if groups < 1:
            raise ConfigError("reward.judge.score_pattern", "needs a capture group for the score")
        positive("reward.judge.scale", self.scale)
        positive("reward.judge.max_new_tokens", self.max_new_tokens)
        positive("reward.judge.max_model_len", self.max_model_len)
        one_of("reward.judge.dtype", self.dtype, DTYPES)
        in_range("reward.judge.gpu_memory_utilization", self.gpu_memory_utilization, 0.01, 0.99)


@dataclass
class RewardConfig:
    """Reward actors. `kind` picks the scorer once, at construction (rlhf/reward/actor.py);
    `components` (non-empty) composes several weighted scorers instead. kind=fn calls
    `fn`: 'task' (the built-in task's rule reward) or a dotted path `package.module:function` /
    `package.module.function` to `fn(prompt, completion, **fields)`, in killable worker
    processes."""

    kind: str = "fn"  # fn | math | model | remote | sandbox | judge
    fn: str = "task"  # kind=fn: the function
    components: list[RewardComponent] = field(default_factory=list)  # weighted sum of scorers
    num_actors: int = 1
    cpus_per_actor: float = 0.25
    gpus_per_actor: float = 0.0  # e.g. for kind=model on GPUs
    timeout_s: float = 5.0  # per sample for fn/math calls; past it the worker is killed
    fallback: float = 0.0  # reward for a sample whose scorer raised, hung, crashed or gave NaN
    workers: int = 2  # worker processes per actor running fn/math calls
    # fn/math samples per worker call: one process round trip serves a chunk; a hang or crash
    # still costs only its own sample (the chunk's unstarted rest goes to a new call). 1 = one
    # call per sample. Chunks are also capped at ceil(batch / workers) so every worker has work.
    chunk_size: int = 32
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    remote: RemoteRewardConfig = field(default_factory=RemoteRewardConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def terms(self) -> list[tuple[str, str, str]]:
        """(config key, kind, fn) of every scorer: the components, or the one kind."""
        if self.components:
            return [
                (f"reward.components[{i}]", c.kind, c.fn) for i, c in enumerate(self.components)
            ]
        return [("reward", self.kind, self.fn)]

    def check(self) -> None:
        """Kinds, functions, model folders, URL, component names. Whether 'task' fits the data
        is a cross-section rule (rlhf/config/root.py)."""
        from rlhf.resolve import resolve_function

        positive("reward.num_actors", self.num_actors)
        positive("reward.timeout_s", self.timeout_s)
        positive("reward.workers", self.workers)
        positive("reward.chunk_size", self.chunk_size)
        positive("reward.cpus_per_actor", self.cpus_per_actor, allow_zero=True)
        positive("reward.gpus_per_actor", self.gpus_per_actor, allow_zero=True)
        one_of("reward.kind", self.kind, REWARD_KINDS)
        names = [c.metric_name() for c in self.components]
        for i, c in enumerate(self.components):
            key = f"reward.components[{i}]"
            one_of(f"{key}.kind", c.kind, REWARD_KINDS)
            if not math.isfinite(c.weight):
                raise ConfigError(f"{key}.weight", f"must be a finite number, got {c.weight!r}")
            if names[i] in RESERVED_METRICS or names[i] in names[:i]:
                raise ConfigError(
                    f"{key}.name",
                    f"{names[i]!r} is reserved or used twice (metric reward/{names[i]}); give "
                    "each component its own name",
                )
        for key, kind, fn in self.terms():
            if kind == "fn" and fn != "task":
                resolve_function(fn, key=f"{key}.fn")
        kinds = {kind for _, kind, _ in self.terms()}
        for kind, section in (
            ("model", self.model),
            ("remote", self.remote),
            ("sandbox", self.sandbox),
            ("judge", self.judge),
        ):
            if kind in kinds:
                section.check()
