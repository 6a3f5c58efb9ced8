"""Typed configuration: the schema Hydra composes into, and `validate`, which runs before Ray.

Every field is documented where it is declared. Each actor receives only its own section
(`LearnerConfig`, `RolloutConfig`, ...), never the root. `validate` checks what the type system
cannot (ranges, names of registered functions, batch divisibility, resources, files) and raises
`ConfigError` naming the offending key and what is allowed.
"""

from __future__ import annotations

import importlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import II, MISSING  # noqa: F401  (MISSING re-exported for experiment schemas)


class ConfigError(ValueError):
    """A config value is wrong. `key` is the dotted path of the offending field."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config error at '{key}': {message}")


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


@dataclass
class TinyModelConfig:
    """The built-in tiny causal LM, built offline and cached (rlhf/models/tiny.py). Defaults
    are what scripts/learnability.py chose (530k parameters)."""

    hidden_size: int = 128  # = num_heads * head_dim (vLLM's Qwen2 ignores config.head_dim)
    num_layers: int = 2
    num_heads: int = 2
    head_dim: int = 64  # the vLLM CPU attention kernels accept 32, 64, 128 (not 16)
    intermediate_size: int = 512
    warmup_steps: int = 300  # cap on supervised steps on the task format before RL (0 = none)
    warmup_lr: float = 1e-3
    # The warm-up stops once the chance of sampling the right answer reaches this, so every
    # seed starts RL from a similar reward; null always runs warmup_steps.
    warmup_target: float | None = 0.15


@dataclass
class MlpConfig:
    """Policy and value MLPs for gymnasium environments."""

    hidden_sizes: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # tanh | relu
    obs_norm: bool = False  # running mean/std of observations: not implemented, validate rejects it
    init_log_std: float = 0.0  # Gaussian policies: initial log standard deviation


@dataclass
class ModelConfig:
    """Which policy the learners train and the rollout workers serve."""

    kind: str = "causal_lm"  # causal_lm (vLLM rollouts) | mlp (gymnasium rollouts)
    path: str = ""  # HF model folder; empty = the built-in tiny model
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gradient_checkpointing: bool = False
    # PPO for LLMs (algo.advantage=gae): the critic's HF model folder (its backbone gets a value
    # head); empty = a copy of the policy's architecture and weights
    critic_path: str = ""
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    mlp: MlpConfig = field(default_factory=MlpConfig)


@dataclass
class DataConfig:
    """Prompts. Empty `path` means the built-in synthetic task named by `task`."""

    path: str = ""  # .jsonl / .json / .parquet / .arrow file, or a datasets.save_to_disk folder
    task: str = "addition"  # built-in task (rlhf/tasks.py), used when path is empty
    # Column holding the prompt: a string, or a list of chat messages {"role", "content"}
    # rendered with the tokenizer's chat template (add_generation_prompt=True).
    prompt_key: str = "prompt"
    # Column passed to the reward function as `answer`; dots reach into nested records
    # (verl-style `reward_model.ground_truth`).
    answer_key: str = "answer"
    shuffle: bool = True
    # Prompts longer than this many tokens are dropped and counted (on_long_prompt=filter) or
    # an error; null = what the engine's context leaves after rollout.max_new_tokens.
    max_prompt_tokens: int | None = None
    on_long_prompt: str = "filter"  # filter | error
    # A row that is not valid UTF-8 / JSON or lacks a field of the right type: error (naming
    # file and line) or skip (counted and logged, up to max_bad_frac of the rows).
    on_bad_row: str = "error"  # error | skip
    max_bad_frac: float = 0.01  # with on_bad_row=skip: more bad rows than this share is an error


@dataclass
class EvalConfig:
    """Held-out evaluation during training (rlhf/evaluation.py). It draws its own prompts
    with its own seeds and never touches the training data stream or its RNG."""

    every: int = 50  # evaluate every N trainer steps, plus step 0 and the last step; 0 = never
    path: str = ""  # held-out file (same formats and keys as data.*); empty = the built-in task
    num_prompts: int = 64  # prompts evaluated (a small finite task uses its whole table)
    samples: int = 8  # sampled responses per prompt, for pass@k and the sampled mean reward
    pass_k: list[int] = field(default_factory=lambda: [1, 4, 8])  # k values of pass@k (<= samples)
    temperature: float = 1.0  # sampling temperature of the sampled responses (greedy uses 0)
    correct_threshold: float = 1.0  # a response counts as correct for pass@k when reward >= this


@dataclass
class AlgoConfig:
    """The algorithm: names index the registries in rlhf/algos.py."""

    name: str = "grpo"  # a label for logs and W&B tags
    advantage: str = "grpo"  # gae | grpo | grpo_no_std | dr_grpo | rloo | reinforce_pp | ...
    # ppo_clip | gspo | cispo | gmpo | clip_cov | kl_cov, or 'package.module:function' with
    # the POLICY_LOSSES signature (resolved like reward.fn; e.g. a test's fault-injecting loss)
    policy_loss: str = "ppo_clip"
    # token-mean | seq-mean-token-mean | seq-mean-token-sum | seq-mean-token-sum-norm
    loss_agg: str = "token-mean"
    clip_low: float = 0.2  # PPO ratio lower bound is 1 - clip_low (cispo: 1 = no lower bound)
    clip_high: float = 0.2  # PPO ratio upper bound is 1 + clip_high (DAPO clip-higher: 0.28)
    dual_clip: float | None = None  # dual-clip constant c > 1; null disables
    cov_ratio: float = 2e-4  # clip_cov / kl_cov: share of tokens selected by covariance
    clip_cov_lb: float = 1.0  # clip_cov: covariance band (lb, ub) of the candidate tokens
    clip_cov_ub: float = 5.0
    kl_cov_coef: float = 1.0  # kl_cov: |log-ratio| penalty weight on the selected tokens
    kl_coef: float = 0.0  # 0 skips the reference model entirely (initial value when adaptive)
    kl_estimator: str = "k3"  # k1 | k2 | k3
    kl_in_reward: bool = False  # True: KL is a per-token reward penalty; False: a loss term
    # Adaptive KL (Ziegler et al. 2019): steer kl_coef so the measured KL nears this target;
    # null keeps kl_coef fixed. Needs kl_in_reward (the coefficient lives in the driver).
    kl_target: float | None = None
    kl_horizon: int = 10000  # adaptive KL: samples over which the coefficient adapts
    entropy_coef: float = 0.0  # entropy bonus (subtracted from the loss)
    value_coef: float = 0.5  # critic loss weight (GAE only)
    value_clip: float | None = None  # clip the critic's change per update; null disables
    critic_lr: float | None = None  # LLM critic's learning rate (its own param group); null = lr
    # Off-policy correction between the learner's old logprobs and the engine's rollout
    # logprobs (rlhf.algos.ROLLOUT_CORRECTIONS): none | tis (truncate at cap) | mask (zero
    # the tokens/sequences whose ratio is above cap or below 1/cap)
    rollout_is: str = "none"
    rollout_is_level: str = "token"  # token | sequence (one ratio per response)
    rollout_is_cap: float = 2.0  # > 1
    # DAPO overlong shaping: a linear penalty, reaching -overlong_penalty at
    # rollout.max_new_tokens, for responses longer than max_new_tokens - overlong_buffer
    overlong_buffer: int = 0  # tokens; 0 disables
    overlong_penalty: float = 1.0
    overlong_max_len: int = II("rollout.max_new_tokens")  # the length the penalty ramps to
    mask_truncated: bool = False  # drop responses cut at max_new_tokens from the loss (DAPO)
    gamma: float = 1.0  # discount
    lam: float = 1.0  # GAE lambda
    normalize_advantages: bool = False  # whiten advantages over the batch (common for PPO)
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant | linear (decays to 0 over trainer.total_steps)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    epochs: int = 1  # passes over each rollout batch
    minibatches: int = 1  # optimizer steps per epoch


@dataclass
class VllmConfig:
    """vLLM engine arguments (the CPU build here, the CUDA build on GPUs)."""

    gpu_memory_utilization: float = 0.1  # on CPU: share of *host* memory for the KV cache
    enforce_eager: bool = True  # skip torch.compile / CUDA graphs: faster start-up
    max_model_len: int = 128
    tensor_parallel_size: int = 1
    enable_prefix_caching: bool = False


@dataclass
class GymConfig:
    """Gymnasium env runners."""

    env_id: str = "CartPole-v1"
    envs_per_worker: int = 8  # vectorised envs stepped by each runner
    steps_per_env: int = 32  # env steps per env per trainer step (the rollout segment)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    async_envs: bool = False  # gymnasium AsyncVectorEnv (processes) instead of SyncVectorEnv


@dataclass
class RolloutConfig:
    """Rollout workers: vLLM engines for LLMs, env runners for gymnasium."""

    backend: str = "vllm"  # vllm | gym
    num_workers: int = 1  # vLLM engines or env runners
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    prompts_per_step: int = 16  # LLM: prompts drawn per trainer step
    samples_per_prompt: int = 8  # LLM: responses per prompt (the GRPO group size)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1 disables
    max_new_tokens: int = 8
    # The rollout pipeline (rlhf/pipeline.py). max_staleness k: engines generate up to k steps
    # ahead of the learner, and no trained sample is more than k weight versions old
    # (0 = on-policy lock-step). LLM rollouts only.
    max_staleness: int = 0
    prompts_per_call: int = (
        0  # prompts per engine generate call (0 = an engine's whole share of a step)
    )
    filter_groups: bool = False  # DAPO dynamic sampling: drop all-equal groups, draw more prompts
    max_filter_rounds: int = 3  # extra draws per step before all-equal groups fill the batch
    vllm: VllmConfig = field(default_factory=VllmConfig)
    gym: GymConfig = field(default_factory=GymConfig)


REWARD_KINDS = ("fn", "math", "model", "remote", "sandbox", "judge")  # rlhf/reward/actor.py SCORERS


@dataclass
class RewardComponent:
    """One weighted term of a composed reward (`reward.components`); each is logged as
    `reward/<name>`. Kinds other than fn read their settings from reward.model/remote/sandbox."""

    name: str = ""  # metric name reward/<name>; empty = the kind (fn: the function's name)
    kind: str = "fn"  # fn | math | model | remote | sandbox | judge
    fn: str = "task"  # kind=fn only: 'task' or 'package.module:function'
    weight: float = 1.0  # the reward is sum(weight * component value)


@dataclass
class RewardModelConfig:
    """reward.kind=model: a Hugging Face sequence-classification model scores prompt+response."""

    path: str = ""  # local model folder (config.json, one output label); nothing is downloaded
    batch_size: int = 32  # sequences per forward pass
    max_length: int = 512  # tokens of prompt + response; longer inputs keep their end
    dtype: str = "float32"  # float32 | bfloat16 | float16
    normalize: bool = False  # standardise scores with a running mean/std over all scored samples


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


@dataclass
class SandboxConfig:
    """reward.kind=sandbox: run the completion's Python against `fields["tests"]` in an isolated,
    resource-limited process (rlhf/reward/sandbox.py). Reward 1.0 when every test passes."""

    timeout_s: float = 5.0  # wall clock per program; then its whole process tree is killed
    cpu_s: int = 2  # RLIMIT_CPU seconds
    memory_mb: int = 512  # RLIMIT_AS
    file_size_mb: int = 8  # RLIMIT_FSIZE
    max_processes: int = 32  # RLIMIT_NPROC of the sandbox user (shared by concurrent programs)
    max_output_kb: int = 64  # stdout/stderr kept per program; the rest is discarded
    concurrency: int = 2  # programs run at once per reward actor
    python: str = ""  # interpreter; empty = /usr/bin/python3 when present, else this one
    tests_key: str = "tests"  # the dataset column holding the test code (asserts)


@dataclass
class JudgeConfig:
    """reward.kind=judge: a vLLM engine in the reward actor answers a judge prompt per sample;
    the score is parsed from its greedy output (rlhf/reward/judge.py)."""

    path: str = ""  # local HF causal-LM folder of the judge
    template: str = "Rate the answer from 0 to 10.\nQuestion: {prompt}\nAnswer: {response}\nScore:"  # fields: prompt, response, answer
    score_pattern: str = "(-?\\d+(?:\\.\\d+)?)"  # regex; its first group is the score
    scale: float = 10.0  # reward = parsed score / scale
    max_new_tokens: int = 8  # judge output tokens
    max_model_len: int = 1024  # the judge engine's context (prompt + output)
    dtype: str = "float32"  # float32 | bfloat16 | float16
    gpu_memory_utilization: float = 0.1  # on CPU: share of host memory for the KV cache


@dataclass
class RewardConfig:
    """Reward actors. `kind` picks the scorer once, at construction (rlhf/reward/actor.py);
    `components` (non-empty) composes several weighted scorers instead. kind=fn calls
    `fn`: 'task' (the built-in task's rule reward) or a dotted path `package.module:function` /
    `package.module.function` to `fn(prompt, completion, **fields)`, in killable worker processes."""

    kind: str = "fn"  # fn | math | model | remote | sandbox | judge
    fn: str = "task"  # kind=fn: the function
    components: list[RewardComponent] = field(default_factory=list)  # weighted sum of scorers
    num_actors: int = 1
    cpus_per_actor: float = 0.25
    gpus_per_actor: float = 0.0  # e.g. for kind=model on GPUs
    timeout_s: float = 5.0  # per sample for fn/math calls; past it the worker is killed
    fallback: float = 0.0  # reward for a sample whose scorer raised, hung, crashed or gave NaN
    workers: int = 2  # worker processes per actor running fn/math calls
    model: RewardModelConfig = field(default_factory=RewardModelConfig)
    remote: RemoteRewardConfig = field(default_factory=RemoteRewardConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)


def _check_reward(cfg: RootConfig) -> None:
    """The reward lines of validate(): kinds, functions, model folders, URL, components."""
    import re

    w = cfg.reward
    _positive("reward.num_actors", w.num_actors)
    _positive("reward.timeout_s", w.timeout_s)
    _positive("reward.workers", w.workers)
    _positive("reward.cpus_per_actor", w.cpus_per_actor, allow_zero=True)
    _positive("reward.gpus_per_actor", w.gpus_per_actor, allow_zero=True)
    if cfg.rollout.backend != "vllm":
        return
    _one_of("reward.kind", w.kind, REWARD_KINDS)
    terms = [(f"reward.components[{i}]", c.kind, c.fn) for i, c in enumerate(w.components)]
    names = [
        c.name or (c.kind if c.kind != "fn" else c.fn.replace(":", ".").rsplit(".", 1)[-1])
        for c in w.components
    ]
    reserved = {
        "mean",
        "std",
        "all_equal_group_frac",
        "errors",
        "timeouts",
        "nans",
        "crashes",
        "retries",
    }
    for i, (key, c) in enumerate(zip([t[0] for t in terms], w.components)):
        _one_of(f"{key}.kind", c.kind, REWARD_KINDS)
        if not math.isfinite(c.weight):
            raise ConfigError(f"{key}.weight", f"must be a finite number, got {c.weight!r}")
        if names[i] in reserved or names[i] in names[:i]:
            raise ConfigError(
                f"{key}.name",
                f"{names[i]!r} is reserved or used twice (metric "
                f"reward/{names[i]}); give each component its own name",
            )
    if not terms:
        terms = [("reward", w.kind, w.fn)]
    kinds = {k for _, k, _ in terms}
    for key, kind, fn in terms:
        if kind != "fn":
            continue
        if fn == "task" and cfg.data.path:
            raise ConfigError(
                f"{key}.fn",
                "'task' scores the built-in task; with data.path set, "
                "name a function 'package.module:function'",
            )
        if fn != "task":
            resolve_function(fn, key=f"{key}.fn")
    if "model" in kinds:
        mc = w.model
        if not mc.path or not (Path(mc.path) / "config.json").is_file():
            raise ConfigError(
                "reward.model.path",
                f"{mc.path!r} is not a Hugging Face model folder (no config.json)",
            )
        _positive("reward.model.batch_size", mc.batch_size)
        _positive("reward.model.max_length", mc.max_length)
        _one_of("reward.model.dtype", mc.dtype, ["float32", "bfloat16", "float16"])
    if "remote" in kinds:
        rc = w.remote
        if not rc.url.startswith(("http://", "https://")):
            raise ConfigError("reward.remote.url", f"must be an http(s):// URL, got {rc.url!r}")
        _positive("reward.remote.batch_size", rc.batch_size)
        _positive("reward.remote.max_concurrency", rc.max_concurrency)
        _positive("reward.remote.timeout_s", rc.timeout_s)
        _positive("reward.remote.max_retries", rc.max_retries, allow_zero=True)
        _positive("reward.remote.backoff_s", rc.backoff_s, allow_zero=True)
        if rc.api_key_env and not os.environ.get(rc.api_key_env):
            raise ConfigError(
                "reward.remote.api_key_env", f"environment variable {rc.api_key_env!r} is not set"
            )
    if "sandbox" in kinds:
        sc = w.sandbox
        for name in (
            "timeout_s",
            "cpu_s",
            "memory_mb",
            "file_size_mb",
            "max_processes",
            "max_output_kb",
            "concurrency",
        ):
            _positive(f"reward.sandbox.{name}", getattr(sc, name))
        if sc.python and not os.access(sc.python, os.X_OK):
            raise ConfigError("reward.sandbox.python", f"{sc.python!r} is not an executable")
    if "judge" in kinds:
        jc = w.judge
        if not jc.path or not (Path(jc.path) / "config.json").is_file():
            raise ConfigError(
                "reward.judge.path",
                f"{jc.path!r} is not a Hugging Face model folder (no config.json)",
            )
        try:
            jc.template.format(prompt="", response="", answer="")
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                "reward.judge.template", f"fields are {{prompt}}, {{response}}, {{answer}}: {e!r}"
            ) from e
        if "{response}" not in jc.template:
            raise ConfigError("reward.judge.template", "must contain {response}")
        try:
            groups = re.compile(jc.score_pattern).groups
        except re.error as e:
            raise ConfigError("reward.judge.score_pattern", f"not a regex: {e}") from e
        if groups < 1:
            raise ConfigError("reward.judge.score_pattern", "needs a capture group for the score")
        _positive("reward.judge.scale", jc.scale)
        _positive("reward.judge.max_new_tokens", jc.max_new_tokens)
        _positive("reward.judge.max_model_len", jc.max_model_len)
        _one_of("reward.judge.dtype", jc.dtype, ["float32", "bfloat16", "float16"])
        _in_range("reward.judge.gpu_memory_utilization", jc.gpu_memory_utilization, 0.01, 0.99)
    if w.gpus_per_actor and not cfg.ray.address:
        import torch

        have = torch.cuda.device_count()
        if w.num_actors * w.gpus_per_actor > have:
            raise ConfigError(
                "reward.gpus_per_actor",
                f"the reward actors need "
                f"{w.num_actors * w.gpus_per_actor:g} GPUs, "
                f"this machine has {have}",
            )


@dataclass
class LearnerConfig:
    """The DeepSpeed learner group (data parallel)."""

    num_ranks: int = 2
    cpus_per_rank: float = 1.0
    gpus_per_rank: float = 0.0
    zero_stage: int = 2  # 0 | 1 | 2 | 3
    micro_batch_size: int = 32  # samples per rank per forward/backward
    # Token budget per forward/backward instead (0 = off: micro_batch_size rows each). Each
    # minibatch's rows are sorted by length and packed so that rows x longest row <= this,
    # each micro-batch cut to its longest row: long-tailed response lengths cost no padding.
    # The loss and gradient are those of the fixed split (minibatch-wide aggregation totals).
    # LLM rollouts only; must hold the longest possible row, data.max_prompt_tokens +
    # rollout.max_new_tokens.
    max_tokens_per_micro_batch: int = 0
    # Updates between post-update diagnostics (algo/update_kl, algo/update_gain,
    # algo/value_update_gain): one more forward pass over the batch, about a quarter of an
    # update's cost. 1 = every update (the console's KL without a reference); 0 = never.
    diagnostics_every: int = 1
    offload_optimizer: bool = False  # ZeRO-Offload of optimizer states to CPU (GPU runs)
    sync_bucket_mb: int = 64  # weight broadcast bucket size


@dataclass
class PlacementConfig:
    """How actors are packed onto the cluster."""

    mode: str = (
        "disaggregated"  # disaggregated (own bundles) | colocated (rollout shares learner bundles)
    )
    strategy: str = (
        "PACK"  # Ray placement strategy per group: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD
    )


@dataclass
class WandbConfig:
    mode: str = (
        "offline"  # online | offline | disabled; online without an API key falls back to offline
    )
    project: str = "rlhf"
    entity: str | None = None
    group: str = ""  # empty: the sweep folder in a multirun, none otherwise
    name: str = ""  # empty: '<experiment>-<algo>-s<seed>-<time>'
    tags: list[str] = field(default_factory=list)


@dataclass
class LoggerConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    console_every: int = 1  # print a progress line every N steps
    samples_every: int = 20  # W&B sample table every N steps (0 = never)
    quiet: bool = True  # keep Ray's and vLLM's own logging out of the console


@dataclass
class TrainerConfig:
    total_steps: int = 200
    save_every: int = 0  # checkpoint every N steps (0 = by wall time only, see save_every_min)
    # Also checkpoint when this many minutes passed since the last save (0 = off): a crash
    # loses at most this much work whatever the step time.
    save_every_min: float = 5.0
    save_final: bool = True
    # Hugging Face export of the policy (config, safetensors, tokenizer, generation config) in
    # each checkpoint's hf/ folder: final (the last checkpoint only) | every | never.
    export_hf: str = "final"
    keep_last: int = 2  # checkpoints kept on disk
    resume: str = "auto"  # auto (latest in the run folder) | never | a checkpoint path
    report: bool = True  # write report.png at the end
    timeline: bool = False  # write timeline.json: a Chrome trace of every actor call (ray.timeline)
    # Rollout workers (vLLM engines, env runners) and reward actors that crash are restarted,
    # their weights re-synced and their prompts re-issued; more than this many restarts over
    # the run end it (a learner rank that dies always does: resume from the last checkpoint).
    max_restarts: int = 3
    # Updates skipped for a non-finite loss or gradient norm, in a row, that end the run.
    max_skipped_updates: int = 3


@dataclass
class RayConfig:
    address: str = ""  # empty starts a local cluster; 'auto' joins a running one
    num_cpus: float | None = None  # local cluster only; null = enough for the placement
    include_dashboard: bool = False
    dashboard_host: str = "127.0.0.1"  # never 0.0.0.0 unless you mean it


@dataclass
class RootConfig:
    seed: int = 0
    experiment: str = "default"  # a label; experiment yamls set it
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ray: RayConfig = field(default_factory=RayConfig)


def register_configs() -> None:
    """Register the schema with Hydra's ConfigStore as `base_config` (conf/config.yaml's base)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=RootConfig)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _one_of(key: str, value: Any, allowed) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(key, f"{value!r} is not one of {allowed}")


def _positive(key: str, value: float, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _in_range(key: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(key, f"must be in [{lo}, {hi}], got {value!r}")


GROUP_ESTIMATORS = ("grpo", "grpo_no_std", "dr_grpo", "rloo", "reinforce_pp_baseline")
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".arrow")


def to_schema(cfg: Any) -> RootConfig:
    """Turn a composed DictConfig into the typed RootConfig (objects, not OmegaConf nodes)."""
    from omegaconf import OmegaConf

    if isinstance(cfg, RootConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootConfig), cfg))


def validate(cfg: RootConfig) -> RootConfig:
    """Check `cfg` and return it. Raises ConfigError naming the key. Imports no Ray or vLLM."""
    from rlhf import algos  # torch only

    m, a, r, lrn = cfg.model, cfg.algo, cfg.rollout, cfg.learner

    # --- names that index registries or enumerations
    _one_of("model.kind", m.kind, ["causal_lm", "mlp"])
    _one_of("model.dtype", m.dtype, ["float32", "bfloat16", "float16"])
    _one_of("algo.advantage", a.advantage, algos.ADVANTAGE_ESTIMATORS.names())
    if ":" in a.policy_loss:
        resolve_function(a.policy_loss, key="algo.policy_loss")
    else:
        _one_of("algo.policy_loss", a.policy_loss, algos.POLICY_LOSSES.names())
    _one_of("algo.loss_agg", a.loss_agg, algos.LOSS_AGGREGATIONS.names())
    _one_of("algo.rollout_is", a.rollout_is, algos.ROLLOUT_CORRECTIONS.names())
    _one_of("algo.rollout_is_level", a.rollout_is_level, ["token", "sequence"])
    _one_of("algo.kl_estimator", a.kl_estimator, algos.KL_ESTIMATORS.names())
    _one_of("algo.lr_schedule", a.lr_schedule, ["constant", "linear"])
    _one_of("rollout.backend", r.backend, ["vllm", "gym"])
    _one_of("learner.zero_stage", lrn.zero_stage, [0, 1, 2, 3])
    _one_of("placement.mode", cfg.placement.mode, ["disaggregated", "colocated"])
    _one_of(
        "placement.strategy",
        cfg.placement.strategy,
        ["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"],
    )
    _one_of("logger.wandb.mode", cfg.logger.wandb.mode, ["online", "offline", "disabled"])
    _one_of("model.mlp.activation", m.mlp.activation, ["tanh", "relu"])

    # --- ranges
    _positive("algo.lr", a.lr)
    _in_range("algo.clip_low", a.clip_low, 0.0, 1.0)
    _positive("algo.clip_high", a.clip_high, allow_zero=True)
    if a.dual_clip is not None and a.dual_clip <= 1.0:
        raise ConfigError("algo.dual_clip", f"must be > 1 (or null to disable), got {a.dual_clip}")
    _positive("algo.kl_coef", a.kl_coef, allow_zero=True)
    if a.kl_target is not None:
        _positive("algo.kl_target", a.kl_target)
        _positive("algo.kl_horizon", a.kl_horizon)
        if not a.kl_in_reward or a.kl_coef <= 0:
            raise ConfigError(
                "algo.kl_target",
                "adaptive KL steers the reward penalty: needs "
                "algo.kl_in_reward=true and algo.kl_coef > 0",
            )
    if a.rollout_is_cap <= 1.0:
        raise ConfigError("algo.rollout_is_cap", f"must be > 1, got {a.rollout_is_cap}")
    _positive("algo.cov_ratio", a.cov_ratio)
    if a.clip_cov_lb >= a.clip_cov_ub:
        raise ConfigError(
            "algo.clip_cov_lb", f"must be < algo.clip_cov_ub ({a.clip_cov_ub}), got {a.clip_cov_lb}"
        )
    _positive("algo.kl_cov_coef", a.kl_cov_coef, allow_zero=True)
    if a.critic_lr is not None:
        _positive("algo.critic_lr", a.critic_lr)
    _positive("algo.overlong_buffer", a.overlong_buffer, allow_zero=True)
    _positive("algo.overlong_penalty", a.overlong_penalty, allow_zero=True)
    if a.overlong_buffer > r.max_new_tokens:
        raise ConfigError(
            "algo.overlong_buffer",
            f"must be <= rollout.max_new_tokens ({r.max_new_tokens}), got {a.overlong_buffer}",
        )
    _positive("algo.entropy_coef", a.entropy_coef, allow_zero=True)
    _positive("algo.value_coef", a.value_coef, allow_zero=True)
    if a.value_clip is not None:
        _positive("algo.value_clip", a.value_clip)
    _in_range("algo.gamma", a.gamma, 0.0, 1.0)
    _in_range("algo.lam", a.lam, 0.0, 1.0)
    _positive("algo.grad_clip", a.grad_clip, allow_zero=True)
    _positive("algo.weight_decay", a.weight_decay, allow_zero=True)
    _positive("algo.epochs", a.epochs)
    _positive("algo.minibatches", a.minibatches)
    _positive("rollout.num_workers", r.num_workers)
    _positive("rollout.cpus_per_worker", r.cpus_per_worker, allow_zero=True)
    _positive("rollout.gpus_per_worker", r.gpus_per_worker, allow_zero=True)
    _positive("rollout.temperature", r.temperature)
    if not 0.0 < r.top_p <= 1.0:
        raise ConfigError("rollout.top_p", f"must be in (0, 1], got {r.top_p}")
    if r.top_k == 0 or r.top_k < -1:
        raise ConfigError("rollout.top_k", f"must be -1 (disabled) or >= 1, got {r.top_k}")
    _positive("rollout.max_new_tokens", r.max_new_tokens)
    _positive("rollout.max_staleness", r.max_staleness, allow_zero=True)
    _positive("rollout.prompts_per_call", r.prompts_per_call, allow_zero=True)
    _positive("rollout.max_filter_rounds", r.max_filter_rounds, allow_zero=True)
    _positive("rollout.prompts_per_step", r.prompts_per_step)
    _positive("rollout.samples_per_prompt", r.samples_per_prompt)
    _in_range("rollout.vllm.gpu_memory_utilization", r.vllm.gpu_memory_utilization, 0.01, 0.99)
    _positive("rollout.gym.envs_per_worker", r.gym.envs_per_worker)
    _positive("rollout.gym.steps_per_env", r.gym.steps_per_env)
    _positive("learner.num_ranks", lrn.num_ranks)
    _positive("learner.micro_batch_size", lrn.micro_batch_size)
    _positive("learner.max_tokens_per_micro_batch", lrn.max_tokens_per_micro_batch, allow_zero=True)
    _positive("learner.diagnostics_every", lrn.diagnostics_every, allow_zero=True)
    _positive("learner.cpus_per_rank", lrn.cpus_per_rank, allow_zero=True)
    _positive("learner.gpus_per_rank", lrn.gpus_per_rank, allow_zero=True)
    _positive("learner.sync_bucket_mb", lrn.sync_bucket_mb)
    _positive("trainer.total_steps", cfg.trainer.total_steps)
    _positive("trainer.save_every", cfg.trainer.save_every, allow_zero=True)
    _positive("trainer.keep_last", cfg.trainer.keep_last)
    _positive("trainer.max_restarts", cfg.trainer.max_restarts, allow_zero=True)
    _positive("trainer.max_skipped_updates", cfg.trainer.max_skipped_updates)
    _positive("trainer.save_every_min", cfg.trainer.save_every_min, allow_zero=True)
    _one_of("trainer.export_hf", cfg.trainer.export_hf, ["final", "every", "never"])
    if (
        m.tiny.hidden_size % m.tiny.head_dim
        or m.tiny.hidden_size // m.tiny.head_dim != m.tiny.num_heads
    ):
        raise ConfigError(
            "model.tiny.hidden_size",
            f"must equal num_heads * head_dim ({m.tiny.num_heads} * {m.tiny.head_dim})",
        )
    _one_of("model.tiny.head_dim", m.tiny.head_dim, [32, 64, 128])

    # --- cross-field rules
    if r.backend == "vllm":
        if m.kind != "causal_lm":
            raise ConfigError("model.kind", "rollout.backend=vllm needs model.kind=causal_lm")
        if a.advantage in GROUP_ESTIMATORS and r.samples_per_prompt < 2:
            raise ConfigError(
                "rollout.samples_per_prompt",
                f"algo.advantage={a.advantage} compares samples of one prompt; "
                f"needs >= 2, got {r.samples_per_prompt}",
            )
        batch = r.prompts_per_step * r.samples_per_prompt
        what = "rollout.prompts_per_step * rollout.samples_per_prompt"
    else:
        if m.kind != "mlp":
            raise ConfigError("model.kind", "rollout.backend=gym needs model.kind=mlp")
        if r.max_staleness or r.filter_groups:
            raise ConfigError(
                "rollout.max_staleness" if r.max_staleness else "rollout.filter_groups",
                "the gym loop is on-policy lock-step: staleness and group filtering "
                "are for LLM rollouts",
            )
        if a.advantage in GROUP_ESTIMATORS:
            raise ConfigError(
                "algo.advantage",
                f"{a.advantage} needs groups of answers to one prompt; gym runs use "
                f"gae or reinforce_pp",
            )
        batch = r.num_workers * r.gym.envs_per_worker * r.gym.steps_per_env
        what = "rollout.num_workers * rollout.gym.envs_per_worker * rollout.gym.steps_per_env"
        _check_gym_env(r.gym.env_id)
        _check_gym_spaces(r.gym)
        if m.mlp.obs_norm:
            raise ConfigError(
                "model.mlp.obs_norm",
                "observation normalisation is not implemented "
                "(its running statistics would have to agree "
                "between learner ranks and env runners)",
            )
    per_update = a.minibatches * lrn.num_ranks * lrn.micro_batch_size
    if batch % per_update:
        raise ConfigError(
            "learner.micro_batch_size",
            f"the rollout batch ({what} = {batch}) must split evenly into "
            f"algo.minibatches ({a.minibatches}) x learner.num_ranks "
            f"({lrn.num_ranks}) x micro-batches of learner.micro_batch_size "
            f"({lrn.micro_batch_size})",
        )
    if cfg.placement.mode == "colocated" and r.num_workers > lrn.num_ranks:
        raise ConfigError(
            "rollout.num_workers",
            f"colocated placement shares learner bundles: at most "
            f"learner.num_ranks ({lrn.num_ranks}) rollout workers, got {r.num_workers}",
        )

    # --- files and code that must exist
    if m.critic_path and not (Path(m.critic_path) / "config.json").is_file():
        raise ConfigError(
            "model.critic_path",
            f"{m.critic_path!r} is not a Hugging Face model folder (no config.json)",
        )
    if m.path and not (Path(m.path) / "config.json").is_file():
        raise ConfigError(
            "model.path", f"{m.path!r} is not a Hugging Face model folder (no config.json)"
        )
    if cfg.data.path:
        p = Path(cfg.data.path)
        if not p.exists():
            raise ConfigError("data.path", f"{cfg.data.path!r} does not exist")
        if p.is_file() and p.suffix not in DATA_SUFFIXES:
            raise ConfigError(
                "data.path",
                f"{p.name!r}: supported files are {list(DATA_SUFFIXES)}"
                f" or a datasets.save_to_disk folder",
            )
    elif r.backend == "vllm":
        from rlhf.tasks import TASKS

        _one_of("data.task", cfg.data.task, sorted(TASKS))
    _check_reward(cfg)

    if r.backend == "vllm":
        _check_data(cfg)
        _check_eval(cfg)
        longest = cfg.data.max_prompt_tokens + r.max_new_tokens
        if 0 < lrn.max_tokens_per_micro_batch < longest:
            raise ConfigError(
                "learner.max_tokens_per_micro_batch",
                f"{lrn.max_tokens_per_micro_batch} tokens cannot hold the longest "
                f"possible row: data.max_prompt_tokens ({cfg.data.max_prompt_tokens})"
                f" + rollout.max_new_tokens ({r.max_new_tokens}) = {longest}",
            )
    elif lrn.max_tokens_per_micro_batch:
        raise ConfigError(
            "learner.max_tokens_per_micro_batch",
            "packs token sequences by length: for LLM rollouts (gym rows are single env steps)",
        )
    if cfg.logger.wandb.mode != "disabled":
        check_wandb_environment()

    tr = cfg.trainer.resume
    if tr not in ("auto", "never") and not Path(tr).exists():
        raise ConfigError(
            "trainer.resume", f"{tr!r} is neither 'auto', 'never' nor an existing checkpoint folder"
        )

    # --- resources on a local cluster (a remote cluster is checked by Ray at placement time)
    gpus = r.num_workers * r.gpus_per_worker + lrn.num_ranks * lrn.gpus_per_rank
    if gpus and not cfg.ray.address:
        import torch

        have = torch.cuda.device_count()
        if gpus > have:
            raise ConfigError(
                "learner.gpus_per_rank" if lrn.gpus_per_rank else "rollout.gpus_per_worker",
                f"the placement needs {gpus:g} GPUs, this machine has {have}",
            )
    if cfg.ray.num_cpus is not None and not cfg.ray.address:
        need = required_cpus(cfg)
        if need > cfg.ray.num_cpus:
            raise ConfigError(
                "ray.num_cpus",
                f"the placement needs {need:g} CPUs "
                f"(learner, rollout, reward bundles); got {cfg.ray.num_cpus:g}",
            )
    return cfg


def _check_data(cfg: RootConfig) -> None:
    """Data options and the context length: a prompt of data.max_prompt_tokens plus
    rollout.max_new_tokens must fit in the engine's rollout.vllm.max_model_len. A null
    max_prompt_tokens is resolved here to what the context leaves."""
    d, r = cfg.data, cfg.rollout
    _one_of("data.on_bad_row", d.on_bad_row, ["error", "skip"])
    _one_of("data.on_long_prompt", d.on_long_prompt, ["filter", "error"])
    _in_range("data.max_bad_frac", d.max_bad_frac, 0.0, 1.0)
    context = r.vllm.max_model_len
    _positive("rollout.vllm.max_model_len", context)
    if r.max_new_tokens >= context:
        raise ConfigError(
            "rollout.max_new_tokens",
            f"{r.max_new_tokens} new tokens leave no room for a prompt in the "
            f"engine's context (rollout.vllm.max_model_len={context}); lower it or "
            f"raise max_model_len",
        )
    if d.max_prompt_tokens is None:
        d.max_prompt_tokens = context - r.max_new_tokens
    _positive("data.max_prompt_tokens", d.max_prompt_tokens)
    if d.max_prompt_tokens + r.max_new_tokens > context:
        raise ConfigError(
            "data.max_prompt_tokens",
            f"a prompt of {d.max_prompt_tokens} tokens + rollout.max_new_tokens="
            f"{r.max_new_tokens} exceeds rollout.vllm.max_model_len={context}; "
            f"lower one of them, raise max_model_len, or leave "
            f"data.max_prompt_tokens null (= what the context leaves)",
        )
    if not d.answer_key or any(not part for part in d.answer_key.split(".")):
        raise ConfigError(
            "data.answer_key",
            f"{d.answer_key!r} is not a column name or a "
            f"dotted path like 'reward_model.ground_truth'",
        )


def _check_eval(cfg: RootConfig) -> None:
    e = cfg.eval
    _positive("eval.every", e.every, allow_zero=True)
    _positive("eval.num_prompts", e.num_prompts)
    _positive("eval.samples", e.samples)
    _positive("eval.temperature", e.temperature)
    for k in e.pass_k:
        if not 1 <= k <= e.samples:
            raise ConfigError(
                "eval.pass_k",
                f"every k must be in [1, eval.samples={e.samples}], got {list(e.pass_k)}",
            )
    if e.every and e.path:
        p = Path(e.path)
        if not p.exists():
            raise ConfigError("eval.path", f"{e.path!r} does not exist")
        if p.is_file() and p.suffix not in DATA_SUFFIXES:
            raise ConfigError(
                "eval.path",
                f"{p.name!r}: supported files are {list(DATA_SUFFIXES)}"
                f" or a datasets.save_to_disk folder",
            )
        w = cfg.reward
        if (
            getattr(w, "kind", "fn") == "fn"
            and w.fn == "task"
            and not getattr(w, "components", None)
        ):
            raise ConfigError(
                "reward.fn",
                "'task' scores the built-in task; eval.path needs a "
                "function 'package.module:function'",
            )


def check_wandb_environment(environ: dict[str, str] | None = None) -> None:
    """WANDB_* environment variables that wandb.init would reject (e.g. WANDB_MODE="" or a
    non-boolean WANDB_SILENT) are a ConfigError now, not a crash after Ray and vLLM started.
    wandb validates them with pydantic when it reads them; this runs the same validation."""
    env = dict(os.environ if environ is None else environ)
    if not any(k.startswith("WANDB_") for k in env):
        return
    import wandb  # only when a WANDB_ variable is set

    try:
        wandb.Settings().update_from_env_vars(env)
    except Exception as e:  # pydantic.ValidationError: name the variable and what it holds
        errors = getattr(e, "errors", None)
        field_name = str(errors()[0]["loc"][0]) if callable(errors) and errors() else ""
        names = [
            k
            for k in env
            if k.startswith("WANDB_")
            and field_name
            and k[len("WANDB_") :].lower() == field_name.lower()
        ]
        var = names[0] if names else "WANDB_*"
        detail = errors()[0]["msg"] if callable(errors) and errors() else str(e)
        raise ConfigError(
            f"env {var}",
            f"{var}={env.get(var, '')!r} in the environment would "
            f"make wandb.init fail: {detail}; unset or fix it, or set "
            f"logger.wandb.mode=disabled",
        ) from None


def required_cpus(cfg: RootConfig) -> float:
    """Logical CPUs all bundles ask for (colocated rollout workers share learner bundles)."""
    learner = cfg.learner.num_ranks * cfg.learner.cpus_per_rank
    rollout = cfg.rollout.num_workers * cfg.rollout.cpus_per_worker
    reward = (
        cfg.reward.num_actors * cfg.reward.cpus_per_actor if cfg.rollout.backend == "vllm" else 0
    )
    if cfg.placement.mode == "colocated":
        rollout = 0
    return learner + rollout + reward


def _check_gym_env(env_id: str) -> None:
    import gymnasium as gym

    if env_id not in gym.registry:
        close = [k for k in gym.registry if env_id.split("-")[0].lower() in k.lower()][:5]
        raise ConfigError(
            "rollout.gym.env_id",
            f"{env_id!r} is not a registered gymnasium env"
            + (f"; similar: {close}" if close else ""),
        )


def _check_gym_spaces(gym_cfg: GymConfig) -> None:
    """Build the env once (bad env_kwargs fail here) and check the MLP policy supports its spaces."""
    from rlhf.rollout.gym_runner import env_spec_of  # gymnasium + torch, no Ray

    try:
        env_spec_of(gym_cfg)
    except Exception as e:  # a constructor error from the env is a config error too
        raise ConfigError(
            "rollout.gym.env_id",
            f"cannot use {gym_cfg.env_id!r} with env_kwargs {dict(gym_cfg.env_kwargs)}: {e}",
        ) from e


def resolve_function(path: str, key: str):
    """Import 'pkg.mod:fn' or 'pkg.mod.fn'. Raises ConfigError naming `key` when it fails."""
    mod_name, sep, attr = path.partition(":")
    if not sep:
        mod_name, _, attr = path.rpartition(".")
    if not mod_name or not attr:
        raise ConfigError(key, f"{path!r} is not 'package.module:function'")
    try:
        module = importlib.import_module(mod_name)
    except Exception as e:  # an import error in user code is a config error, reported early
        raise ConfigError(key, f"cannot import module {mod_name!r}: {e}") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(key, f"{mod_name!r} has no callable {attr!r}")
    return fn


def ray_env_vars() -> dict[str, str]:
    """Environment the actors need; secrets (W&B key and the like) are never forwarded. The
    project's own RLHF_* variables (cache folder, test fault injection) go along."""
    keep = (
        "HF_HOME",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "VLLM_CPU_KVCACHE_SPACE",
        "VLLM_CPU_OMP_THREADS_BIND",
        "PYTHONPATH",
    )
    return {k: v for k, v in os.environ.items() if k in keep or k.startswith("RLHF_")}
