"""Everything checked before Ray starts: the config (rlhf/config), then what depends on the
machine rather than the config — GPUs and CPUs for the placement, a gymnasium env that
builds with its kwargs, W&B environment variables that wandb.init would reject. Each failure
is a ConfigError naming the key, reported by rlhf.train with exit code 2."""

from __future__ import annotations

import os

from rlhf.config import ConfigError, RootConfig, validate
from rlhf.placement import required_cpus


def preflight(cfg: RootConfig) -> RootConfig:
    """The validated, resolved config; raises ConfigError. Imports no Ray, vLLM or DeepSpeed."""
    cfg = validate(cfg)
    if cfg.rollout.backend == "gym":
        from rlhf.rollout.gym_runner import check_gym_config  # gymnasium + torch

        check_gym_config(cfg.rollout.gym)
    if cfg.model.uses_lora:
        check_lora_targets(cfg)
    if cfg.env.id:
        from rlhf.rollout.agent_loop import check_env_config  # the env registry

        check_env_config(cfg.env)
    if not cfg.ray.address:  # a remote cluster's resources are Ray's to check at placement
        check_local_resources(cfg)
    if cfg.logger.wandb.mode != "disabled":
        check_wandb_environment()
    from rlhf.progress import console

    for message in advisories(cfg):
        console(f"warning: {message}")
    return cfg


def check_lora_targets(cfg: RootConfig) -> None:
    """model.lora.target_modules name linear layers of the model (its config.json, or the
    built-in tiny model's architecture), and with model.lora.train_lm_head its output layer is
    an untied lm_head; checked on a weightless meta-device copy."""
    from rlhf.models.lora import check_lm_head, check_target_modules, tiny_hf_config

    if cfg.model.path:
        from transformers import AutoConfig

        hf_config = AutoConfig.from_pretrained(cfg.model.path)
    else:
        hf_config = tiny_hf_config(cfg.model)
    check_target_modules(cfg.model.lora, hf_config)
    if cfg.model.lora.train_lm_head:
        check_lm_head(cfg.model.lora, hf_config)


def advisories(cfg: RootConfig) -> list[str]:
    """Settings that run but are likely to cost the user: said once, before Ray starts."""
    out = []
    r, a = cfg.rollout, cfg.algo
    if r.backend == "vllm" and r.max_staleness > 0 and a.rollout_is == "none":
        out.append(
            f"rollout.max_staleness={r.max_staleness} trains samples up to that many weight "
            "versions old without off-policy correction (algo.rollout_is=none); on the 'spell' "
            "task this cost most of the learning (scripts/bench_pipeline.py, README's pipeline "
            "table): consider algo.rollout_is=tis"
        )
    return out


def check_local_resources(cfg: RootConfig) -> None:
    """The GPUs the bundles ask for exist here; ray.num_cpus covers the bundles' CPUs."""
    r, lrn, w = cfg.rollout, cfg.learner, cfg.reward
    llm = r.backend == "vllm"
    gpus = r.num_workers * r.gpus_per_worker + lrn.num_ranks * lrn.gpus_per_rank
    reward_gpus = w.num_actors * w.gpus_per_actor if llm else 0.0
    if gpus or reward_gpus:
        import torch

        have = torch.cuda.device_count()
        if gpus > have:
            raise ConfigError(
                "learner.gpus_per_rank" if lrn.gpus_per_rank else "rollout.gpus_per_worker",
                f"the placement needs {gpus:g} GPUs, this machine has {have}",
            )
        if reward_gpus > have:
            raise ConfigError(
                "reward.gpus_per_actor",
                f"the reward actors need {reward_gpus:g} GPUs, this machine has {have}",
            )
    if cfg.ray.num_cpus is not None and required_cpus(cfg) > cfg.ray.num_cpus:
        raise ConfigError(
            "ray.num_cpus",
            f"the placement needs {required_cpus(cfg):g} CPUs (learner, rollout, reward "
            f"bundles); got {cfg.ray.num_cpus:g}",
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
        first = errors()[0] if callable(errors) and errors() else None
        field_name = str(first["loc"][0]) if first else ""
        names = [
            k
            for k in env
            if k.startswith("WANDB_")
            and field_name
            and k[len("WANDB_") :].lower() == field_name.lower()
        ]
        var = names[0] if names else "WANDB_*"
        detail = first["msg"] if first else str(e)
        raise ConfigError(
            f"env {var}",
            f"{var}={env.get(var, '')!r} in the environment would make wandb.init fail: "
            f"{detail}; unset or fix it, or set logger.wandb.mode=disabled",
        ) from None
