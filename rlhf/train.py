"""`python -m rlhf.train +experiment=grpo`: config -> validate -> Ray -> roles -> Trainer.fit.

Everything that can be wrong with the config or the data is checked before Ray starts and
reported as one paragraph naming the key, with exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from rlhf.compose import CONF_DIR
from rlhf.config import ConfigError, RootConfig, register_configs, to_schema
from rlhf.placement import required_cpus
from rlhf.preflight import preflight

_T0 = time.perf_counter()  # launch, near enough: start-up messages count from here
register_configs()


def resolve_model_path(cfg: RootConfig) -> str:
    """The model folder: model.path, or the built-in tiny model (built offline and cached)."""
    if cfg.model.kind != "causal_lm":
        return ""
    if cfg.model.path:
        return cfg.model.path
    from rlhf.models.tiny import build_tiny_model

    t = cfg.model.tiny
    return str(
        build_tiny_model(
            task=cfg.data.task,
            hidden_size=t.hidden_size,
            num_layers=t.num_layers,
            num_heads=t.num_heads,
            head_dim=t.head_dim,
            intermediate_size=t.intermediate_size,
            warmup_steps=t.warmup_steps,
            warmup_lr=t.warmup_lr,
            warmup_target=t.warmup_target,
            seed=cfg.seed,
        )
    )


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


def init_ray(cfg: RootConfig) -> dict:
    """Join `ray.address` or start a local cluster bound to 127.0.0.1. Returns the actors'
    runtime_env: the environment variables they need (no secrets) for a cluster joined, none
    for a local one, whose workers inherit them."""
    import ray

    env = ray_env_vars()
    # DeepSpeed's CPU comm op, built by `make install` into the venv (not the per-user cache
    # that every venv on the machine shares and overwrites); actors inherit the variable.
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    env["TORCH_EXTENSIONS_DIR"] = os.environ["TORCH_EXTENSIONS_DIR"]
    if cfg.logger.quiet:
        env.update(
            VLLM_LOGGING_LEVEL="WARNING",
            VLLM_CONFIGURE_LOGGING="1",
            DS_LOG_LEVEL="warning",
            RAY_DEDUP_LOGS="1",
        )
    kwargs = dict(
        logging_level=logging.WARNING,
        log_to_driver=not cfg.logger.quiet,
        include_dashboard=cfg.ray.include_dashboard,
    )
    if cfg.ray.address:
        startup().say(f"joining Ray at {cfg.ray.address}")
        ray.init(address=cfg.ray.address, **kwargs)
        return {"env_vars": env}
    startup().say("starting Ray (local cluster)")
    # A local cluster's workers inherit the environment the raylet starts with, so the actors'
    # variables go there rather than into a per-actor runtime_env: actors with a runtime_env
    # cannot use the workers Ray prestarts at init and each waits for a new process (about
    # 0.5 s of CPU apiece, during the start-up's busiest seconds).
    with _environ(env):
        # address="local": always a new cluster; without it ray.init joins any cluster another
        # process on this machine started (and then rejects num_cpus).
        ray.init(
            address="local",
            # whole CPUs: Ray refuses a fractional count (bundles may ask for 0.25)
            num_cpus=cfg.ray.num_cpus or max(os.cpu_count() or 1, math.ceil(required_cpus(cfg))),
            dashboard_host=cfg.ray.dashboard_host,
            _node_ip_address="127.0.0.1",
            **kwargs,
        )
    return {}


@contextlib.contextmanager
def _environ(values: dict[str, str]):
    """os.environ with `values` set, restored afterwards (a sweep's next run starts clean)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def build_and_fit(
    cfg: RootConfig, run_dir: Path, resolved: dict, prompts=None, model_path: str = ""
) -> dict:
    import ray

    if not model_path and cfg.model.kind == "causal_lm" and not cfg.model.path:
        startup().say("building the tiny model (cached after the first run)")
    model_path = model_path or resolve_model_path(cfg)
    runtime_env = init_ray(cfg)
    # SIGTERM now (ray.init installed its own handler): unwind and shut Ray down; Trainer.fit's
    # loop handles it itself while it runs.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        trainer = build_trainer(cfg, run_dir, resolved, prompts, model_path, runtime_env)
        startup().say("ready: first step")
        return trainer.fit(resume_from=resume_point(cfg, trainer))
    finally:
        ray.shutdown()


def build_trainer(
    cfg: RootConfig, run_dir: Path, resolved: dict, prompts, model_path: str, runtime_env: dict
):
    """Every role on the running Ray cluster, composed into a Trainer."""
    from rlhf.learner.group import LearnerGroup
    from rlhf.metrics import RunLogger, run_identity
    from rlhf.placement import create_placement
    from rlhf.trainer import Trainer

    placement = create_placement(cfg)
    r, restarts = cfg.rollout, cfg.trainer.max_restarts
    startup().say(
        f"building {len(placement.rollout)} {r.backend} rollout worker(s), "
        f"{len(placement.reward)} reward actor(s), {len(placement.learner)} learner "
        f"rank(s) in parallel"
    )
    if r.backend == "vllm":
        from rlhf.evaluation import Evaluator
        from rlhf.pipeline import RolloutPipeline
        from rlhf.reward.actor import RewardGroup
        from rlhf.rollout.vllm_engine import VllmRollout

        rollout = VllmRollout(
            r,
            model_path,
            cfg.model.dtype,
            cfg.seed,
            placement.rollout,
            runtime_env,
            max_restarts=restarts,
            env=cfg.env,
            lora=cfg.model.lora if cfg.model.uses_lora else None,
        )
        rewards = RewardGroup(
            cfg.reward, cfg.data.task, placement.reward, runtime_env, max_restarts=restarts
        )
        pipeline = RolloutPipeline(
            r,
            prompts,
            rollout.workers,
            rewards,
            seed=cfg.seed,
            ledger_path=run_dir / "ledger.jsonl",
            score_episodes=cfg.env.score_transcript,
        )
        evaluator = (
            Evaluator.from_config(
                cfg.eval,
                cfg.data,
                seed=cfg.seed,
                total_steps=cfg.trainer.total_steps,
                tokenizer_path=model_path,
            )
            if cfg.eval.every
            else None
        )
        rows, env_spec, primary = r.prompts_per_step * r.samples_per_prompt, None, "reward/mean"
    else:
        from rlhf.pipeline import LockstepPipeline
        from rlhf.rollout.gym_runner import GymRollout, env_spec_of

        env_spec = env_spec_of(r.gym)
        # gamma: the runners bootstrap time-limit truncations with gamma * V(final obs)
        rollout = GymRollout(
            r,
            cfg.model.mlp,
            env_spec,
            cfg.seed,
            placement.rollout,
            runtime_env,
            gamma=cfg.algo.gamma,
            max_restarts=restarts,
        )
        pipeline, evaluator, rewards = LockstepPipeline(rollout), None, None
        rows = r.num_workers * r.gym.envs_per_worker * r.gym.steps_per_env
        primary = "env/episode_return_mean"
    learners = LearnerGroup(
        cfg.learner,
        cfg.algo,
        cfg.model,
        model_path,
        placement.learner,
        rows_per_step=rows,
        temperature=r.temperature,
        total_steps=cfg.trainer.total_steps,
        seed=cfg.seed,
        env_spec=env_spec,
        runtime_env=runtime_env,
    )
    startup().say("learner ranks ready (DeepSpeed); waiting for the rollout workers")
    record_placement(run_dir, learners.actors, rollout.workers)
    startup().say("rollout workers ready; setting up weight sync, sending the initial weights")
    name, group, tags = run_identity(cfg)
    logger = RunLogger(
        cfg.logger,
        run_dir,
        config=resolved,
        total_steps=cfg.trainer.total_steps,
        name=name,
        group=group,
        tags=tags,
        primary_metric=primary,
    )
    return Trainer(
        cfg.trainer,
        cfg.algo,
        pipeline=pipeline,
        rollout=rollout,
        learners=learners,
        logger=logger,
        run_dir=run_dir,
        evaluator=evaluator,
        evaluator_rewards=rewards,
    )


def startup():
    """The start-up log of this process (messages with seconds since launch)."""
    global _STARTUP
    if _STARTUP is None:
        from rlhf.progress import StartupLog

        _STARTUP = StartupLog(_T0)
    return _STARTUP


_STARTUP = None


def record_placement(run_dir: Path, learners: list, rollout_workers: list) -> None:
    """Write placement.json: the Ray node of every learner rank and rollout worker."""
    import json

    import ray

    nodes = {
        "learner": ray.get([a.node_id.remote() for a in learners]),
        "rollout": ray.get([w.node_id.remote() for w in rollout_workers]),
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "placement.json").write_text(json.dumps(nodes, indent=1))


def resume_point(cfg: RootConfig, trainer) -> Path | None:
    if cfg.trainer.resume == "never":
        return None
    if cfg.trainer.resume == "auto":
        return trainer.checkpoints.latest()
    return Path(cfg.trainer.resume)


_sigterm_received = False  # set by the start-up SIGTERM handler: what the interrupt was


def _exit_on_sigterm(signum, frame):
    """SIGTERM outside the training loop (which handles signals itself, Trainer.fit): unwind
    like Ctrl-C, so that `finally` shuts Ray down instead of the default action leaving its
    processes behind. Ray's blocking calls re-raise a plain KeyboardInterrupt, so the signal
    is remembered here rather than in the exception's type."""
    global _sigterm_received
    _sigterm_received = True
    raise KeyboardInterrupt


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def main(dcfg: DictConfig) -> float:
    try:
        cfg = preflight(to_schema(dcfg))
        prompts = None
        model_path = resolve_model_path(cfg)
        if cfg.rollout.backend == "vllm":
            from rlhf.data import PromptSource

            # Reads and checks data files now; the model's tokenizer renders chat prompts and
            # measures their length.
            prompts = PromptSource(cfg.data, cfg.seed, tokenizer_path=model_path)
    except ConfigError as e:
        print(
            f"rlhf: {e}\n(no Ray process was started; fix the override or the config file)",
            file=sys.stderr,
        )
        sys.exit(2)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    resolved = OmegaConf.to_container(dcfg, resolve=True)
    from rlhf.faults import RunFailed, Stopped

    try:
        summary = build_and_fit(cfg, run_dir, resolved, prompts, model_path)
    except Stopped as stop:
        print(
            f"rlhf: stopped by {signal.Signals(stop.signum).name} after saving a checkpoint; "
            f"rerun with the same hydra.run.dir={run_dir} to resume (trainer.resume=auto)",
            file=sys.stderr,
        )
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:
        if _sigterm_received:
            print(
                "rlhf: stopped by SIGTERM outside the training loop (start-up or shut-down); no "
                "checkpoint was written for it. Rerun the same command to start again (or "
                f"resume from the last checkpoint with the same hydra.run.dir={run_dir})",
                file=sys.stderr,
            )
            sys.exit(128 + signal.SIGTERM)
        print(
            f"rlhf: interrupted; resume with the same hydra.run.dir={run_dir} "
            f"(trainer.resume=auto)",
            file=sys.stderr,
        )
        sys.exit(130)
    except RunFailed as e:
        print(f"rlhf: the run failed: {e}", file=sys.stderr)
        sys.exit(1)
    return float(summary.get("last_fifth", float("nan")))


if __name__ == "__main__":
    main()
