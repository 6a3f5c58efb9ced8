"""After a weight sync, the vLLM engine serves the learner's weights; and the in-place load it
takes on CPU is exact against vLLM's layerwise reload (the last test).

Tolerance: the learner (transformers, float32) and vLLM CPU (float32) agree on the logprobs of
the same tokens to ~1e-6 with identical weights (9.5e-7 max measured on this stack). We require a
mean absolute difference below 1e-4 after the sync, and check that before the sync the
difference is above 1e-3 (one update with lr 1e-2 moves logprobs by far more), so the test
fails if the broadcast or the in-place load does nothing.
"""

import pytest
import ray
import torch

from rlhf import algos
from rlhf.batch import GenerationRequest, collate
from rlhf.config import RootConfig
from rlhf.learner.group import LearnerGroup
from rlhf.placement import Slot
from rlhf.rollout.vllm_engine import VllmEngine
from rlhf.trainer import Trainer

pytestmark = pytest.mark.integration

SYNCED_TOL = 1e-4
STALE_MIN = 1e-3


class _OneEngineRollout:
    """Just enough of VllmRollout for Trainer._init_weight_sync / sync_weights."""

    def __init__(self, engine):
        self.engine, self.sync_ranks = engine, 1

    def init_weight_sync(self, host, port, world_size, meta, bucket_bytes):
        return [self.engine.init_weight_sync.remote(host, port, 1, world_size, meta, bucket_bytes)]

    def receive_weights(self, version):
        return [self.engine.receive_weights.remote(version)]


def _diff(batch, learners) -> float:
    batch = LearnerGroup.attach(batch, ray.get(learners.compute_logprobs(batch)))
    return float(
        algos.masked_mean((batch.rollout_logprobs - batch.old_logprobs).abs(), batch.action_mask)
    )


@pytest.fixture(scope="module")
def engine(ray_local, tiny_model_path):
    """One engine for both ZeRO stages (its start-up is most of this module's time); each test
    brings its own learner ranks and first sends their initial weights, as a run does."""
    pg = ray.util.placement_group([{"CPU": 1}])
    ray.get(pg.ready())
    engine = (
        ray.remote(VllmEngine)
        .options(**Slot(pg, 0, 1, 0).options())
        .remote(RootConfig().rollout, tiny_model_path, "float32", 0, 0)
    )
    yield engine
    ray.kill(engine)
    ray.util.remove_placement_group(pg)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_engine_serves_learner_weights_after_sync(learner_group, engine, zero_stage):
    cfg = RootConfig()
    cfg.learner.zero_stage = zero_stage
    cfg.learner.micro_batch_size = 16
    cfg.learner.sync_bucket_mb = 1  # several buckets, to exercise the bucket plan
    cfg.algo.lr = 1e-2
    learners = learner_group(cfg, rows_per_step=64)
    rollout = _OneEngineRollout(engine)
    trainer = Trainer.__new__(Trainer)  # only the weight-sync methods are used
    trainer.learners, trainer.rollout, trainer.version = learners, rollout, 0
    trainer._init_weight_sync()
    if ray.get(engine.weight_version.remote()) != 0:  # the other stage's test updated it
        trainer.sync_weights(version=0)

    prompts = [
        GenerationRequest(
            prompt_id=i, sample_index=j, seed=100 * i + j, prompt=f"{a}+{b}=", answer=str(a + b)
        )
        for i, (a, b) in enumerate([(1, 2), (3, 4), (5, 6), (7, 8)] * 2)
        for j in range(8)
    ]
    batch = collate([s for s in ray.get(engine.generate.remote(prompts))])
    assert _diff(batch, learners) < SYNCED_TOL, "same weights on both sides should agree"

    # One update with random advantages changes the learner's weights.
    batch = LearnerGroup.attach(batch, ray.get(learners.compute_logprobs(batch)))
    batch.advantages = torch.randn_like(batch.old_logprobs) * batch.action_mask
    batch.returns = batch.advantages.clone()
    ray.get(learners.update(batch))
    ranks = ray.get([a.state_checksum.remote() for a in learners.actors])
    assert ranks[0] == pytest.approx(ranks[1], rel=1e-9), "data-parallel ranks disagree"

    stale = collate(ray.get(engine.generate.remote(prompts)))
    assert _diff(stale, learners) > STALE_MIN, "the update did not move the learner's logprobs"

    trainer.sync_weights()
    assert ray.get(engine.weight_version.remote()) == 1

    def load_path(actor) -> list:  # in the engine actor (pickled by value): per worker
        return actor._rpc("weight_load_path")

    assert ray.get(engine.__ray_call__.remote(load_path)) == ["inplace"]  # the CPU path
    fresh = collate(ray.get(engine.generate.remote(prompts)))
    assert all(
        v == 1 for v in [s.weight_version for s in ray.get(engine.generate.remote(prompts[:2]))]
    )
    assert _diff(fresh, learners) < SYNCED_TOL


# --- the in-place load itself (rlhf/rollout/engine_load.py), on the same engine
#
# The in-place load (rlhf/rollout/engine_load.py) is the one a CPU engine takes, and it is
# exact: after loading the same weights, the engine generates the same tokens with bitwise the
# same logprobs as after vLLM's layerwise reload, from either path to the other and back.
#
# The weights are the engine's own checkpoint and a scaled copy (x1.1 on every tensor, so the
# linear layers' packed handles change, not only the norms): the scaled load must change the
# output, or the test would pass with a load that does nothing.

LOAD_PROMPTS = ["1+2=", "3+4=", "10+20=", "7+8="]


def test_in_place_load_is_taken_on_cpu_and_exact(engine):
    # Last in the module: it leaves scaled weights at version 0, which the sync tests above
    # would take for the checkpoint's.
    # Run in the engine actor (__ray_call__), defined here so Ray pickles it by value.
    def _in_engine(engine: VllmEngine):
        """In the engine actor: every load of the sequence, and what the engine generates after."""
        from vllm import SamplingParams

        def load(worker, how: str, scale: float):
            import glob

            from safetensors.torch import load_file

            from rlhf.rollout.engine_load import load_into_engine, load_layerwise

            model, config = worker.model_runner.get_model(), worker.model_runner.model_config
            state = {}
            for f in sorted(glob.glob(f"{config.model}/*.safetensors")):
                state.update(load_file(f))
            named = [(n, t * scale) for n, t in state.items()]
            if how == "layerwise":
                load_layerwise(model, config, iter(named), [model])
                return how
            return load_into_engine(model, config, iter(named))

        def generate():
            engine.llm.reset_prefix_cache()  # the cached KV was computed by the old weights
            params = SamplingParams(temperature=0, max_tokens=8, logprobs=1)
            return [
                (
                    list(o.outputs[0].token_ids),
                    [next(iter(d.values())).logprob for d in o.outputs[0].logprobs],
                )
                for o in engine.llm.generate(LOAD_PROMPTS, params, use_tqdm=False)
            ]

        # The checkpoint's weights first: the module's sync tests left the learner's in it.
        engine._rpc(load, ("layerwise", 1.0))
        out = {"initial": generate()}
        for step, (how, scale) in enumerate(
            [
                ("layerwise", 1.1),
                ("inplace", 1.0),
                ("inplace", 1.1),
                ("layerwise", 1.0),
                ("inplace", 1.1),
            ]
        ):
            (path,) = engine._rpc(load, (how, scale))
            out[step] = (path, scale, generate())
        return out

    out = ray.get(engine.__ray_call__.remote(_in_engine))
    initial = out.pop("initial")
    steps = [out[i] for i in range(len(out))]
    assert [path for path, _, _ in steps] == [
        "layerwise",
        "inplace",
        "inplace",
        "layerwise",
        "inplace",
    ]
    layerwise_scaled = steps[0][2]
    assert layerwise_scaled != initial, "the scaled weights must change the output"
    for path, scale, result in steps:
        expected = initial if scale == 1.0 else layerwise_scaled
        assert result == expected, f"{path} x{scale} differs from the layerwise reload"
