"""The in-place load (rlhf/rollout/engine_load.py) is the one a CPU engine takes, and it is
exact: after loading the same weights, the engine generates the same tokens with bitwise the
same logprobs as after vLLM's layerwise reload, from either path to the other and back.

The weights are the engine's own checkpoint and a scaled copy (x1.1 on every tensor, so the
linear layers' packed handles change, not only the norms): the scaled load must change the
output, or the test would pass with a load that does nothing."""

import pytest
import ray

from rlhf.config import RootConfig
from rlhf.placement import Slot
from rlhf.rollout.vllm_engine import VllmEngine

pytestmark = pytest.mark.integration

PROMPTS = ["1+2=", "3+4=", "10+20=", "7+8="]


def test_in_place_load_is_taken_on_cpu_and_exact(ray_local, tiny_model_path):
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
                for o in engine.llm.generate(PROMPTS, params, use_tqdm=False)
            ]

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

    pg = ray.util.placement_group([{"CPU": 1}])
    ray.get(pg.ready())
    engine = (
        ray.remote(VllmEngine)
        .options(**Slot(pg, 0, 1, 0).options())
        .remote(RootConfig().rollout, tiny_model_path, "float32", 0, 0)
    )
    try:
        out = ray.get(engine.__ray_call__.remote(_in_engine))
    finally:
        ray.kill(engine)
        ray.util.remove_placement_group(pg)
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
