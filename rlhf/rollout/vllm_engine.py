"""A Ray actor that owns one vLLM engine (the CPU build here, the CUDA build on GPUs).

`generate` turns prompts into Samples with token ids, per-token logprobs of the sampled tokens,
the finish reason and the weight version that produced them. New weights arrive through the
weight-sync group (rlhf/rollout/weight_sync.py) and are loaded in place.

Two engines behind the same methods, chosen once at construction:
- single-turn prompts (`env.id` empty): vLLM's in-process `LLM`, one batched `generate` call;
- agent episodes (`env.id` set): vLLM's `AsyncLLM` on an event loop of its own thread, one
  coroutine per episode (rlhf/rollout/agent_loop.py), so episodes advance independently and
  the engine batches whatever turns are ready. AsyncLLM always runs its engine core in a child
  process; `collective_rpc` still reaches the worker extension there, so the weight sync is
  the same. The actor's calls still run one at a time: a weight sync never lands mid-episode.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from rlhf.batch import GenerationRequest, Sample
from rlhf.config import LoraConfig, RolloutConfig
from rlhf.faults import NotSynced, restarted_actor
from rlhf.rollout.workers import RolloutWorkers

if TYPE_CHECKING:
    from rlhf.config import EnvConfig


class VllmEngine:
    """Wrapped with ray.remote by the placement code; plain class so tests can read it."""

    def __init__(
        self,
        cfg: RolloutConfig,
        model_path: str,
        dtype: str,
        seed: int,
        index: int,
        env: EnvConfig | None = None,
        lora: LoraConfig | None = None,
    ):
        """lora: serve the base plus the adapter the learners send (rlhf/rollout/lora_sync.py);
        None = the learners send full weights."""
        # Keep vLLM's engine core in this process: one fewer process per engine, and
        # collective_rpc reaches the worker extension directly.
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm.platforms import current_platform

        if cfg.vllm.enforce_eager and current_platform.is_cpu():
            # Eager means no torch.compile at all here: vLLM still compiles its sampler's
            # token-rank kernel (ops/logprobs.py) with inductor on the first request that asks
            # for logprobs -- about 2 s of tracing and gcc on step 1, on the start-up's
            # critical path. Eager returns the same logprobs. (On GPUs the compiled kernel
            # saves a [tokens, vocab] copy, so it stays.)
            import torch._dynamo

            torch._dynamo.config.disable = True
            # AsyncLLM's engine core is a spawned child: it reads the same switch from here.
            os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")

        self.cfg, self.index, self.version = cfg, index, 0
        engine_args = dict(
            model=model_path,
            dtype=dtype,
            seed=seed + 1000 * index,
            gpu_memory_utilization=cfg.vllm.gpu_memory_utilization,
            enforce_eager=cfg.vllm.enforce_eager,
            max_model_len=cfg.vllm.max_model_len,
            tensor_parallel_size=cfg.vllm.tensor_parallel_size,
            enable_prefix_caching=cfg.vllm.enable_prefix_caching,
            # Logprobs after temperature/top-p, i.e. of the distribution actually sampled from:
            # the learner divides its logits by the same temperature.
            logprobs_mode="processed_logprobs",
            worker_extension_cls="rlhf.rollout.weight_sync.VllmWeightReceiver",
        )
        self.adapter = None
        if lora is not None and lora.enabled:
            from rlhf.rollout.lora_sync import AdapterSlot

            self.adapter = AdapterSlot(lora)
            engine_args.update(self.adapter.engine_args())
        self.env = env if env is not None and env.id else None
        if self.env is None:
            from vllm import LLM

            self.llm = LLM(**engine_args)
            self.tokenizer = self.llm.get_tokenizer()
        else:
            self.agents = _AgentEngine(engine_args, model_path, self.env, cfg)
            self.agents.adapter = self.adapter
            self.agents.version = lambda: self.version
        # After Ray restarted this actor it serves the base weights and belongs to no weight-sync
        # group: refuse work until the trainer has re-synced it (rlhf/faults.py).
        self.synced = not restarted_actor()
        self.sync_ready = False  # joined the current weight-sync group

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def generate(self, requests: list[GenerationRequest]) -> list[Sample]:
        """One Sample per request, in request order. Each request samples with its own seed,
        so its tokens depend only on (weights, prompt, seed), not on which engine serves it,
        what else is batched with it, or how often the engine restarted."""
        from vllm import SamplingParams, TokensPrompt

        if not self.synced:
            raise NotSynced(self.index)
        if self.env is not None:
            return self._episodes(requests)
        start = time.perf_counter()
        c = self.cfg
        params = [
            SamplingParams(
                n=1,
                seed=r.seed,
                logprobs=0,
                top_p=c.top_p,
                top_k=c.top_k,
                temperature=c.temperature if r.temperature is None else r.temperature,
                max_tokens=c.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens,
            )
            for r in requests
        ]
        prompts = [
            TokensPrompt(prompt_token_ids=r.prompt_token_ids)
            if r.prompt_token_ids is not None
            else r.prompt
            for r in requests
        ]
        # LoRA: the current adapter's request (its name says the weight version), else None
        lora = self.adapter.request if self.adapter is not None else None
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=lora)
        elapsed = time.perf_counter() - start
        samples = []
        for r, out in zip(requests, outputs):
            o = out.outputs[0]
            token_ids = list(o.token_ids)
            samples.append(
                Sample(
                    group_id=r.prompt_id,
                    prompt_ids=list(out.prompt_token_ids),
                    response_ids=token_ids,
                    rollout_logprobs=[lp[t].logprob for t, lp in zip(token_ids, o.logprobs)],
                    prompt=r.prompt if r.prompt else (out.prompt or ""),
                    response=o.text,
                    answer=r.answer,
                    fields=r.fields,
                    finish_reason=o.finish_reason or "",
                    weight_version=self.version,
                    info={
                        "sample_index": r.sample_index,
                        "engine": self.index,
                        "engine_call_s": elapsed,
                    },
                )
            )
        return samples

    def _episodes(self, requests: list[GenerationRequest]) -> list[Sample]:
        """One agent episode per request, all at once; Samples in request order."""
        start = time.perf_counter()
        from rlhf.rollout.agent_loop import episode_version

        samples = self.agents.run(requests)
        elapsed = time.perf_counter() - start
        for s in samples:  # the oldest version any of its turns was sampled by
            s.weight_version = episode_version(s.info["turn_versions"], self.version)
            s.info.update(engine=self.index, engine_call_s=elapsed)
        return samples

    def _rpc(self, method: str, args: tuple = ()) -> list[Any]:
        if self.env is None:
            return self.llm.collective_rpc(method, args=args)
        return self.agents.call(self.agents.llm.collective_rpc(method, args=args))

    def init_weight_sync(
        self,
        host: str,
        port: int,
        rank_offset: int,
        world_size: int,
        meta: list[tuple[str, tuple[int, ...], str]],
        bucket_bytes: int,
    ) -> None:
        self._rpc("init_weight_sync", (host, port, rank_offset, world_size, meta, bucket_bytes))
        self.sync_ready = True

    def receive_weights(self, version: int) -> int:
        if not self.sync_ready:
            raise NotSynced(self.index)  # restarted: not in the group the learner sends to
        if self.adapter is not None:  # LoRA: only the adapter travels, the base stays
            folder, lora_id = self.adapter.next_load()
            sources = set(self._rpc("receive_adapter", (folder, lora_id)))
            if len(sources) != 1:  # tensor-parallel workers run the same code and vLLM
                raise RuntimeError(f"workers installed the adapter differently: {sources}")
            self.adapter.installed(folder, version, sources.pop())
        else:
            self._rpc("receive_weights")
        self.synced = True
        # cached KV was computed by the old weights
        if self.env is None:
            self.llm.reset_prefix_cache()
        else:
            self.agents.call(self.agents.llm.reset_prefix_cache())
        self.version = version
        return version

    def weight_version(self) -> int:
        return self.version

    def adapter_loaded(self) -> dict | None:
        """model.lora: the adapter the next call names (its folder), how the last sync installed it
        ("tensors" or "folder", rlhf/rollout/lora_sync.py) and the adapter ids vLLM's workers
        hold now; None without LoRA. Tests and the benchmark read it."""
        if self.adapter is None:
            return None
        request = self.adapter.request
        return dict(
            name=request.lora_name if request else None,
            id=request.lora_int_id if request else None,
            folder=request.lora_path if request else None,
            source=self.adapter.source,
            worker_ids=self._rpc("adapter_ids"),
        )


class _AgentEngine:
    """vLLM's AsyncLLM on an event loop in a thread of its own, and the agent episodes that
    run on it: `run(requests)` runs one coroutine per episode and waits for all of them."""

    adapter = None  # the engine's AdapterSlot under model.lora (rlhf/rollout/lora_sync.py)
    version = staticmethod(lambda: 0)  # the engine's weight version now (set by VllmEngine)

    def __init__(self, engine_args: dict, model_path: str, env: EnvConfig, cfg: RolloutConfig):
        from concurrent.futures import ThreadPoolExecutor

        from transformers import AutoTokenizer

        from rlhf.envs.render import ChatRenderer
        from rlhf.rollout.agent_loop import EpisodeLimits

        self.env_cfg, self.cfg = env, cfg
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="agent-loop", daemon=True).start()
        self.llm = self.call(self._start(engine_args))
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.renderer = ChatRenderer(self.tokenizer)
        self.limits = EpisodeLimits(
            max_turns=env.max_turns,
            max_tokens_per_turn=env.max_tokens_per_turn,
            max_episode_tokens=env.max_episode_tokens or cfg.vllm.max_model_len,
            step_timeout_s=env.step_timeout_s,
        )
        # Environment calls run here (thread isolation) or wait on their process here; a hung
        # call holds its thread, so there are many.
        self.pool = ThreadPoolExecutor(max_workers=256, thread_name_prefix="env")

    @staticmethod
    async def _start(engine_args: dict):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        args = dict(engine_args, disable_log_stats=True)
        if current_platform.is_cpu():
            # Turns arriving one by one make the scheduler split prefills across steps; with
            # a per-request seed vLLM then rewinds the request's generator, which a CPU
            # generator cannot do ("CPU Generator does not use offset": the engine core dies,
            # seen after ~25 agent steps). Whole prefills only: a context fits the budget.
            args.update(
                enable_chunked_prefill=False,
                max_num_batched_tokens=max(4096, engine_args["max_model_len"]),
            )
        return AsyncLLM.from_engine_args(AsyncEngineArgs(**args))

    def call(self, coro):
        """Run a coroutine on the engine's loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    async def generate(
        self, context: list[int], seed: int, max_tokens: int, stop_ids: list[int]
    ) -> tuple[list[int], list[float], list[int]]:
        from vllm import SamplingParams, TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        c = self.cfg
        params = SamplingParams(
            n=1,
            seed=seed,
            logprobs=0,
            top_p=c.top_p,
            top_k=c.top_k,
            temperature=c.temperature,
            max_tokens=max_tokens,
            stop_token_ids=stop_ids,
            output_kind=RequestOutputKind.FINAL_ONLY,
        )
        final = None
        async for out in self.llm.generate(
            TokensPrompt(prompt_token_ids=context),
            params,
            request_id=uuid.uuid4().hex,
            lora_request=self.adapter.request if self.adapter is not None else None,
        ):
            final = out
        o = final.outputs[0]
        ids = list(o.token_ids)
        return ids, [lp[t].logprob for t, lp in zip(ids, o.logprobs)], list(final.prompt_token_ids)

    def _env(self):
        from rlhf.rollout.agent_loop import ProcessEnv, ThreadEnv

        e = self.env_cfg
        if e.isolation == "process":
            return ProcessEnv(e.id, dict(e.kwargs), self.pool, e.step_timeout_s)
        from rlhf.envs.base import make

        return ThreadEnv(lambda: make(e.id, **dict(e.kwargs)), self.pool, e.step_timeout_s)

    async def _run_all(self, requests: list[GenerationRequest]) -> list[Sample]:
        from rlhf.rollout.agent_loop import run_episode

        return list(
            await asyncio.gather(
                *(
                    run_episode(
                        self.generate, self._env(), self.renderer, r, self.limits, self.version
                    )
                    for r in requests
                )
            )
        )

    def run(self, requests: list[GenerationRequest]) -> list[Sample]:
        from rlhf.rollout.agent_loop import transcript

        samples = self.call(self._run_all(requests))
        for s in samples:
            s.response = self.tokenizer.decode(s.response_ids)
            s.info["transcript"] = transcript(s, self.tokenizer.decode)
        return samples


class VllmRollout(RolloutWorkers):
    """The rollout role for LLMs: the vLLM engines and their side of the weight sync. Which
    prompts they generate, and when, is the rollout pipeline's business (rlhf/pipeline.py).
    Methods return ObjectRefs; the driver calls ray.get."""

    exports_hf = True  # checkpoints can carry a Hugging Face export of the policy

    def __init__(
        self,
        cfg: RolloutConfig,
        model_path: str,
        dtype: str,
        seed: int,
        slots,
        runtime_env: dict | None = None,
        max_restarts: int = 0,
        env: EnvConfig | None = None,
        lora: LoraConfig | None = None,
    ):
        """env: the agent environment (rlhf/envs); None or an empty id = single-turn prompts.
        lora: the engines serve the base plus the learners' adapter (model.lora)."""
        from rlhf.placement import spawn

        self.cfg = cfg
        workers = spawn(
            VllmEngine,
            slots,
            lambda i: ((cfg, model_path, dtype, seed, i), {"env": env, "lora": lora}),
            runtime_env,
            max_restarts=max_restarts,
        )
        # Every tensor-parallel worker of every engine is a receiver in the weight-sync group.
        super().__init__(workers, ranks_per_worker=cfg.vllm.tensor_parallel_size)

    def metrics(self, samples: list[Sample]) -> dict[str, float]:
        from rlhf.rollout.agent_loop import env_metrics

        lengths = [len(s.response_ids) for s in samples]
        return {
            "rollout/response_len_mean": sum(lengths) / len(lengths),
            "rollout/response_len_max": float(max(lengths)),
            "rollout/truncated_frac": sum(s.finish_reason == "length" for s in samples)
            / len(samples),
            "rollout/tokens": float(sum(lengths)),
            **env_metrics(samples),
        }

    def state(self) -> dict[str, Any]:
        return {}  # the engines keep nothing across steps; prompts are the pipeline's

    def load_state(self, state: dict[str, Any]) -> None:
        pass

    def sample_rows(self, samples: list[Sample], k: int = 8) -> list[dict[str, Any]]:
        """A few samples for the W&B table / samples.jsonl."""
        return [
            {
                "prompt": s.prompt,
                # what the engine's tokenizer made of the prompt (a dropped character shows)
                "prompt_tokens": len(s.prompt_ids),
                "response": s.response,
                "answer": s.answer,
                "reward": s.reward,
                "finish": s.finish_reason,
                # the row's extra reward columns (e.g. a reasoning-gym entry's index)
                **({"fields": s.fields} if s.fields else {}),
                # agent episodes: the whole transcript, each segment marked model / env
                **(
                    {
                        "transcript": s.info.get("transcript", []),
                        "turns": s.info.get("turns", 0),
                        "turn_rewards": [r for _, r in s.turn_rewards or []],
                        "success": s.info.get("success", False),
                        "env_error": s.info.get("env_error", ""),
                    }
                    if s.response_mask is not None
                    else {}
                ),
            }
            for s in samples[:k]
        ]
