"""The root of the schema, Hydra's registration, and `validate`: each section's own checks,
then the rules that span sections. Runs before Ray and imports nothing heavy (torch at most,
for the algorithm registries' names).

Checks that need the machine rather than the config (GPUs present, CPUs for the placement,
a gymnasium env that builds, W&B environment variables) live with the code they protect and
run in `rlhf.train.preflight`, also before Ray.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from rlhf.config.algo import GROUP_ESTIMATORS, AlgoConfig
from rlhf.config.checks import ConfigError, positive
from rlhf.config.data import DataConfig, EvalConfig
from rlhf.config.env import EnvConfig
from rlhf.config.learner import LearnerConfig
from rlhf.config.model import ModelConfig
from rlhf.config.reward import RewardConfig
from rlhf.config.rollout import RolloutConfig
from rlhf.config.run import LoggerConfig, PlacementConfig, RayConfig, TrainerConfig


@dataclass
class RootConfig:
    seed: int = 0
    experiment: str = "default"  # a label; experiment yamls set it
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    env: EnvConfig = field(default_factory=EnvConfig)  # agent episodes; env.id "" = single-turn
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


def to_schema(cfg: Any) -> RootConfig:
    """Turn a composed DictConfig into the typed RootConfig (objects, not OmegaConf nodes)."""
    from omegaconf import OmegaConf

    if isinstance(cfg, RootConfig):
        return cfg
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RootConfig), cfg))


def validate(cfg: RootConfig) -> RootConfig:
    """Check `cfg` and return a resolved copy (derived defaults such as
    data.max_prompt_tokens filled in); `cfg` itself is left as it was. Raises ConfigError
    naming the key."""
    llm = cfg.rollout.backend == "vllm"
    for section in (
        cfg.model,
        cfg.algo,
        cfg.rollout,
        cfg.learner,
        cfg.placement,
        cfg.logger,
        cfg.trainer,
        cfg.ray,
    ):
        section.check()
    if llm:
        cfg.data.check()
        cfg.eval.check()
        cfg.reward.check()
        _check_llm(cfg)
        cfg.env.check()
        _check_env(cfg)
        cfg = replace(cfg, data=replace(cfg.data, max_prompt_tokens=_prompt_budget(cfg)))
        _check_token_budget(cfg)
    else:
        _check_gym(cfg)
    _check_batch_split(cfg)
    if cfg.algo.rollout_is == "auto":  # AlgoConfig.rollout_is: tis where samples can go stale
        stale = cfg.rollout.max_staleness > 0
        cfg = replace(cfg, algo=replace(cfg.algo, rollout_is="tis" if stale else "none"))
    return cfg


def _check_llm(cfg: RootConfig) -> None:
    m, a, r = cfg.model, cfg.algo, cfg.rollout
    if m.kind != "causal_lm":
        raise ConfigError("model.kind", "rollout.backend=vllm needs model.kind=causal_lm")
    if a.advantage in GROUP_ESTIMATORS and r.samples_per_prompt < 2:
        raise ConfigError(
            "rollout.samples_per_prompt",
            f"algo.advantage={a.advantage} compares samples of one prompt; needs >= 2, got "
            f"{r.samples_per_prompt}",
        )
    if a.overlong_buffer > r.max_new_tokens:
        raise ConfigError(
            "algo.overlong_buffer",
            f"must be <= rollout.max_new_tokens ({r.max_new_tokens}), got {a.overlong_buffer}",
        )
    if cfg.placement.mode == "colocated" and r.num_workers > cfg.learner.num_ranks:
        raise ConfigError(
            "rollout.num_workers",
            f"colocated placement shares learner bundles: at most learner.num_ranks "
            f"({cfg.learner.num_ranks}) rollout workers, got {r.num_workers}",
        )
    # 'task' is the built-in task's rule: it cannot score prompts from a file. (Agent episodes
    # go to the reward actors only with env.score_transcript: the environment scores them.)
    scored = not cfg.env.id or cfg.env.score_transcript
    for key, kind, fn in cfg.reward.terms() if scored else ():
        if kind == "fn" and fn == "task" and cfg.data.path:
            raise ConfigError(
                f"{key}.fn",
                "'task' scores the built-in task; with data.path set, name a function "
                "'package.module:function'",
            )
    w = cfg.reward
    if cfg.eval.every and cfg.eval.path and w.kind == "fn" and w.fn == "task" and not w.components:
        raise ConfigError(
            "reward.fn",
            "'task' scores the built-in task; eval.path needs a function 'package.module:function'",
        )


def _check_env(cfg: RootConfig) -> None:
    """An agent episode's token budget fits the engine's context with room for a turn."""
    e, context = cfg.env, cfg.rollout.vllm.max_model_len
    if not e.id:
        return
    if e.max_episode_tokens > context:
        raise ConfigError(
            "env.max_episode_tokens",
            f"{e.max_episode_tokens} tokens exceed the engine's context "
            f"(rollout.vllm.max_model_len={context}); lower it or leave 0 (= the context)",
        )
    budget = e.max_episode_tokens or context
    if e.max_tokens_per_turn >= budget:
        raise ConfigError(
            "env.max_tokens_per_turn",
            f"{e.max_tokens_per_turn} sampled tokens per turn leave no room for the first "
            f"context in an episode budget of {budget} tokens",
        )
    if cfg.eval.every:
        raise ConfigError(
            "eval.every",
            "held-out evaluation runs single-turn prompts; agent runs (env.id set) need "
            "eval=off (the episode success rate is logged as env/success_rate)",
        )


def _prompt_budget(cfg: RootConfig) -> int:
    """data.max_prompt_tokens, or what the engine's context leaves after the response: a
    prompt of that many tokens plus rollout.max_new_tokens must fit rollout.vllm.max_model_len."""
    d, r = cfg.data, cfg.rollout
    context = r.vllm.max_model_len
    if r.max_new_tokens >= context:
        raise ConfigError(
            "rollout.max_new_tokens",
            f"{r.max_new_tokens} new tokens leave no room for a prompt in the engine's context "
            f"(rollout.vllm.max_model_len={context}); lower it or raise max_model_len",
        )
    budget = context - r.max_new_tokens if d.max_prompt_tokens is None else d.max_prompt_tokens
    positive("data.max_prompt_tokens", budget)
    if budget + r.max_new_tokens > context:
        raise ConfigError(
            "data.max_prompt_tokens",
            f"a prompt of {budget} tokens + rollout.max_new_tokens={r.max_new_tokens} exceeds "
            f"rollout.vllm.max_model_len={context}; lower one of them, raise max_model_len, or "
            f"leave data.max_prompt_tokens null (= what the context leaves)",
        )
    return budget


def _check_token_budget(cfg: RootConfig) -> None:
    lrn, longest = cfg.learner, cfg.data.max_prompt_tokens + cfg.rollout.max_new_tokens
    if 0 < lrn.max_tokens_per_micro_batch < longest:
        raise ConfigError(
            "learner.max_tokens_per_micro_batch",
            f"{lrn.max_tokens_per_micro_batch} tokens cannot hold the longest possible row: "
            f"data.max_prompt_tokens ({cfg.data.max_prompt_tokens}) + rollout.max_new_tokens "
            f"({cfg.rollout.max_new_tokens}) = {longest}",
        )


def _check_gym(cfg: RootConfig) -> None:
    a, r = cfg.algo, cfg.rollout
    if cfg.model.kind != "mlp":
        raise ConfigError("model.kind", "rollout.backend=gym needs model.kind=mlp")
    if r.max_staleness or r.filter_groups:
        raise ConfigError(
            "rollout.max_staleness" if r.max_staleness else "rollout.filter_groups",
            "the gym loop is on-policy lock-step: staleness and group filtering are for LLM "
            "rollouts",
        )
    if a.advantage in GROUP_ESTIMATORS:
        raise ConfigError(
            "algo.advantage",
            f"{a.advantage} needs groups of answers to one prompt; gym runs use gae or "
            f"reinforce_pp",
        )
    if cfg.learner.max_tokens_per_micro_batch:
        raise ConfigError(
            "learner.max_tokens_per_micro_batch",
            "packs token sequences by length: for LLM rollouts (gym rows are single env steps)",
        )


def _check_batch_split(cfg: RootConfig) -> None:
    a, r, lrn = cfg.algo, cfg.rollout, cfg.learner
    if r.backend == "vllm":
        batch = r.prompts_per_step * r.samples_per_prompt
        what = "rollout.prompts_per_step * rollout.samples_per_prompt"
    else:
        batch = r.num_workers * r.gym.envs_per_worker * r.gym.steps_per_env
        what = "rollout.num_workers * rollout.gym.envs_per_worker * rollout.gym.steps_per_env"
    per_update = a.minibatches * lrn.num_ranks * lrn.micro_batch_size
    if batch % per_update:
        raise ConfigError(
            "learner.micro_batch_size",
            f"the rollout batch ({what} = {batch}) must split evenly into algo.minibatches "
            f"({a.minibatches}) x learner.num_ranks ({lrn.num_ranks}) x micro-batches of "
            f"learner.micro_batch_size ({lrn.micro_batch_size})",
        )
