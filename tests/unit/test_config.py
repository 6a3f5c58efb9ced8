"""Every shipped experiment composes and validates; bad overrides fail early, naming the key."""

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from rlhf.compose import CONF_DIR, compose
from rlhf.config import ConfigError, validate
from rlhf.preflight import preflight

EXPERIMENTS = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml"))
ROOT = Path(__file__).resolve().parents[2]


def load(*overrides):
    return compose(*overrides, check=False)[0]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment):
    cfg = validate(load(f"+experiment={experiment}"))
    assert cfg.experiment == experiment


def test_default_experiment_uses_contract_keys():
    cfg = load("+experiment=grpo")
    assert cfg.model.path == "" and cfg.data.path == ""
    assert cfg.trainer.resume == "auto" and cfg.logger.wandb.mode in (
        "online",
        "offline",
        "disabled",
    )
    assert cfg.ray.address == "" and cfg.ray.dashboard_host == "127.0.0.1"


# (override, key the message must name)
BAD = [
    ("algo.lr=-1", "algo.lr"),
    ("algo.advantage=ppo2", "algo.advantage"),
    ("algo.loss_agg=token-sum", "algo.loss_agg"),
    ("algo.dual_clip=0.5", "algo.dual_clip"),
    ("rollout.temperature=0", "rollout.temperature"),
    ("rollout.top_p=1.5", "rollout.top_p"),
    # truncated sampling: the learner would score another distribution than the engines sample
    ("rollout.top_p=0.9", "rollout.top_p"),
    ("rollout.top_k=5", "rollout.top_k"),
    ("rollout.samples_per_prompt=1", "rollout.samples_per_prompt"),
    ("learner.zero_stage=4", "learner.zero_stage"),
    ("learner.micro_batch_size=7", "learner.micro_batch_size"),
    ("learner.gpus_per_rank=1", "learner.gpus_per_rank"),
    ("logger.wandb.mode=loud", "logger.wandb.mode"),
    ("model.path=/nonexistent/model", "model.path"),
    ("data.path=/nonexistent/prompts.jsonl", "data.path"),
    ("data.task=multiplication", "data.task"),
    ("reward.fn=no_such_module:score", "reward.fn"),
    ("reward.timeout_s=0", "reward.timeout_s"),
    ("trainer.resume=/no/such/checkpoint", "trainer.resume"),
    ("ray.num_cpus=1", "ray.num_cpus"),
]


@pytest.mark.parametrize("override,key", BAD)
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        preflight(load("+experiment=grpo", override))
    assert err.value.key == key
    assert key in str(err.value)


def test_bad_gym_env_names_the_key():
    with pytest.raises(ConfigError, match="rollout.gym.env_id"):
        preflight(load("+experiment=cartpole_ppo", "rollout.gym.env_id=NoSuchEnv-v0"))


def test_group_estimator_rejected_for_gym():
    with pytest.raises(ConfigError, match="algo.advantage"):
        validate(load("+experiment=cartpole_ppo", "algo.advantage=grpo"))


@pytest.mark.parametrize(
    "override,needle", [("algo.lrr=1", "lrr"), ("trainer.total_steps=many", "total_steps")]
)
def test_unknown_key_and_bad_type_fail_at_composition(override, needle):
    with pytest.raises(ConfigCompositionException) as err:
        load("+experiment=grpo", override)
    assert needle in str(err.value) + str(err.value.__cause__)


def test_validation_imports_no_ray_vllm_or_deepspeed():
    code = textwrap.dedent("""
        import sys
        from hydra import compose, initialize_config_dir
        from rlhf.config import ConfigError, to_schema
        from rlhf.preflight import preflight
        from rlhf.train import CONF_DIR
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            for o in %r:
                try:
                    preflight(to_schema(compose("config", overrides=["+experiment=grpo", o])))
                except ConfigError:
                    pass
                else:
                    raise SystemExit("no error for " + o)
        heavy = [m for m in ("ray", "vllm", "deepspeed") if m in sys.modules]
        assert not heavy, heavy
    """) % [o for o, _ in BAD]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_cli_reports_config_error_before_ray():
    t0 = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.train",
            "+experiment=grpo",
            "algo.lr=-1",
            "hydra.run.dir=/tmp/rlhf-test-bad-config",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    assert "algo.lr" in proc.stderr and "no Ray process was started" in proc.stderr
    assert elapsed < 30, f"config error took {elapsed:.1f}s to report"


def test_bad_jsonl_row_is_named(tmp_path):
    from rlhf.data import PromptSource

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "a", "answer": "1"}\n{"question": "b"}\n')
    cfg = load("+experiment=grpo", f"data.path={bad}", "reward.fn=rlhf.reward.rules:exact_match")
    cfg = validate(cfg)
    with pytest.raises(ConfigError, match=r"prompts.jsonl:line 2: no field 'prompt'"):
        PromptSource(cfg.data, seed=0)


def test_stale_rollouts_without_correction_are_flagged_before_ray():
    from rlhf.preflight import advisories

    assert advisories(validate(load("+experiment=grpo"))) == []
    stale = validate(load("+experiment=grpo", "rollout.max_staleness=1", "algo.rollout_is=none"))
    (message,) = advisories(stale)
    assert "rollout.max_staleness=1" in message and "algo.rollout_is" in message


def test_rollout_is_auto_corrects_stale_runs_only():
    """The default, measured best on stale runs (AlgoConfig.rollout_is): tis when samples can
    be older than the weights, none on-policy; an explicit choice is kept."""
    assert validate(load("+experiment=grpo")).algo.rollout_is == "none"
    assert validate(load("+experiment=grpo", "rollout.max_staleness=2")).algo.rollout_is == "tis"
    kept = validate(load("+experiment=grpo", "rollout.max_staleness=2", "algo.rollout_is=mask"))
    assert kept.algo.rollout_is == "mask"
    assert load("+experiment=grpo").algo.rollout_is == "auto"  # the input is left as it was
