"""Agent episodes on a vLLM engine: one coroutine per episode, token-in/token-out.

An episode alternates model turns and environment steps until the environment ends it or a
limit cuts it (`env.max_turns`, a token budget per episode that fits the engine's context, a
per-step timeout). The engine's sampled token ids are appended verbatim; the environment's
messages are rendered to token ids as a delta after them (ChatRenderer.delta_ids, rlhf/envs);
nothing already in the context is ever re-tokenized, so the learner trains on exactly the tokens
the engine saw and sampled.

The finished episode is one Sample (rlhf/batch.py): `prompt_ids` the first context,
`response_ids` everything after it, `response_mask` 1 on sampled tokens and 0 on environment
tokens, `rollout_logprobs` one per response token (0.0 on environment tokens: masked),
`turn_rewards` (position of the turn's last sampled token, reward).

Environments are untrusted code: `reset`/`step` run in a worker thread (`env.isolation=thread`)
or in a process of their own (`process`), each call bounded by `env.step_timeout_s`. A call that
raises, hangs past the timeout or kills its process ends that episode only (`info["env_error"]`);
the collate step gives such an episode no loss and no weight in its group (rlhf/batch.py).

Seeds: the environment is reset with the request's seed and model turn t samples with
`turn_seed(seed, t)`, so the same request replays the same episode (an engine that dies
mid-episode has its requests re-issued whole: the replay starts from reset, not from a turn).

Weight versions: every model turn records the version of the weights that sampled it
(`info["turn_versions"]`); the episode's version is the OLDEST of them (`episode_version`), so
the staleness the pipeline bounds is never understated, even if a weight sync landed between
two turns. (On the vLLM actor it cannot: the actor runs one call at a time and an episode is
one call, so all its turns share a version; the record makes that checkable, not assumed.)
"""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rlhf.batch import GenerationRequest, Sample

# (context ids, seed, max new tokens, stop token ids) -> (sampled ids, their logprobs, the ids
# the engine itself reports as the request's prompt)
Generate = Callable[
    [list[int], int, int, list[int]], Awaitable[tuple[list[int], list[float], list[int]]]
]


def digest(ids: list[int]) -> str:
    """A short digest of token ids (the episode's turn log records the engine's contexts)."""
    return hashlib.blake2b(str(list(ids)).encode(), digest_size=8).hexdigest()


def episode_version(turn_versions: list[int], default: int) -> int:
    """An episode's weight version: the oldest version of any of its sampled turns (`default`,
    the engine's version, for an episode that sampled nothing)."""
    return min(turn_versions, default=default)


def turn_seed(seed: int, turn: int) -> int:
    """The sampling seed of model turn `turn` of the episode seeded `seed` (63 bits)."""
    digest = hashlib.blake2b(f"{seed}/turn/{turn}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "little") >> 1


@dataclass(frozen=True)
class EpisodeLimits:
    max_turns: int  # model turns
    max_tokens_per_turn: int  # sampled tokens per model turn
    max_episode_tokens: int  # prompt + response tokens of the whole episode (<= max_model_len)
    step_timeout_s: float  # per env.reset / env.step call


class EnvFailed(Exception):
    """An environment call raised, hung past its timeout or lost its process."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind  # "exception" | "timeout" | "crash"


def check_env_config(env) -> None:
    """env.id names a registered environment (the built-ins register on import of rlhf.envs);
    a ConfigError naming the registered ids if not. Runs in rlhf.preflight, before Ray."""
    from rlhf.config import ConfigError

    if not env.id:
        return
    import rlhf.envs  # noqa: F401  (registers the built-in environments)
    from rlhf.envs.base import spec

    try:
        spec(env.id)
    except KeyError as e:
        raise ConfigError("env.id", str(e.args[0])) from None
    except ImportError as e:
        raise ConfigError("env.id", f"cannot import the module of {env.id!r}: {e}") from e


# ---------------------------------------------------------------------------- environments
class ThreadEnv:
    """The environment in this process; each call (construction included) in a worker thread,
    bounded by the timeout. A call past its timeout cannot be stopped (Python threads cannot be
    killed): the episode is cut and the thread abandoned; isolation=process kills it instead."""

    def __init__(self, factory: Callable[[], Any], pool: ThreadPoolExecutor, timeout_s: float):
        self.factory, self.pool, self.timeout_s = factory, pool, timeout_s
        self.env = None
        self.schemas: list[dict] = []

    async def _call(self, fn, *args):
        future = asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        done, _ = await asyncio.wait([future], timeout=self.timeout_s)
        if not done:  # (an env that raises TimeoutError itself is an exception, not a hang)
            raise EnvFailed("timeout", f"no reply within {self.timeout_s}s")
        try:
            return future.result()
        except Exception as e:
            raise EnvFailed("exception", f"{type(e).__name__}: {str(e)[:200]}") from e

    async def reset(self, task: dict[str, Any], seed: int):
        def build_and_reset():
            self.env = self.factory()
            self.schemas = _schemas(self.env)
            return self.env.reset(task, seed)

        return await self._call(build_and_reset)

    async def step(self, action: str):
        return await self._call(self.env.step, action)

    async def close(self, failed: bool = False) -> None:
        if failed or self.env is None:
            return  # a hung or broken env may block in close too
        try:
            await self._call(self.env.close)
        except EnvFailed:
            pass


def _schemas(env) -> list[dict]:
    """The OpenAI-style schemas of the environment's tools (rlhf/envs/tools.py)."""
    tools = tuple(getattr(env, "tools", ()) or ())
    if not tools:
        return []
    from rlhf.envs.tools import tool_schema

    return [tool_schema(fn) for fn in tools]


def _env_process(conn, env_id: str, kwargs: dict[str, Any]) -> None:
    """The loop of an environment's own process: ("reset"|"step"|"close", args) -> reply."""
    from rlhf.envs.base import make

    try:
        env = make(env_id, **kwargs)
        conn.send(("ok", _schemas(env)))
    except Exception as e:
        conn.send(("error", f"{type(e).__name__}: {str(e)[:200]}"))
        return
    while True:
        try:
            op, args = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", getattr(env, op)(*args)))
        except Exception as e:
            conn.send(("error", f"{type(e).__name__}: {str(e)[:200]}"))
        if op == "close":
            return


class ProcessEnv:
    """The environment in a process of its own (forkserver), talking over a pipe: a call that
    raises, hangs (the process is killed) or kills the process ends the episode only."""

    _context = None

    def __init__(self, env_id: str, kwargs: dict[str, Any], pool: ThreadPoolExecutor, timeout_s):
        if ProcessEnv._context is None:
            # forkserver: the children fork from a clean server, not from the engine's process
            # (threads, the engine client's sockets), and start much faster than spawn.
            ProcessEnv._context = multiprocessing.get_context("forkserver")
        ctx = ProcessEnv._context
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_env_process, args=(child, env_id, kwargs), daemon=True)
        self.proc.start()
        child.close()
        self.pool, self.timeout_s = pool, timeout_s
        self.schemas: list[dict] | None = None

    async def _reply(self, timeout_s: float):
        loop = asyncio.get_running_loop()
        ready = await loop.run_in_executor(self.pool, self.conn.poll, timeout_s)
        if not ready:
            self.kill()
            raise EnvFailed("timeout", f"no reply within {timeout_s}s")
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            self.proc.join(1)
            raise EnvFailed("crash", f"env process exited (code {self.proc.exitcode})") from None
        if status == "error":
            raise EnvFailed("exception", value)
        return value

    async def _call(self, op: str, *args):
        if self.schemas is None:  # the process builds the env first (imports: generous timeout)
            self.schemas = await self._reply(max(self.timeout_s, 60.0))
        try:
            self.conn.send((op, args))
        except (BrokenPipeError, OSError):
            raise EnvFailed("crash", f"env process exited (code {self.proc.exitcode})") from None
        return await self._reply(self.timeout_s)

    async def reset(self, task: dict[str, Any], seed: int):
        return await self._call("reset", task, seed)

    async def step(self, action: str):
        return await self._call("step", action)

    async def close(self, failed: bool = False) -> None:
        if not failed and self.proc.is_alive():
            try:
                await self._call("close")
            except EnvFailed:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()


# ---------------------------------------------------------------------------- the episode
async def run_episode(
    generate: Generate,
    env,
    renderer,
    request: GenerationRequest,
    limits: EpisodeLimits,
    version: Callable[[], int] = lambda: 0,
) -> Sample:
    """One episode of `env` (a ThreadEnv / ProcessEnv) on the task in `request`, as a Sample.
    version(): the engine's weight version now; each turn records it (the older one, should
    it change while the turn is sampled)."""
    start = time.perf_counter()
    # The prompt row: its columns at the top level (the interface's contract) and under
    # "fields" (as PromptSource hands them over).
    task = {
        **request.fields,
        "prompt": request.prompt,
        "answer": request.answer,
        "fields": request.fields,
    }
    prompt_ids: list[int] = []
    response: list[int] = []
    mask: list[int] = []
    logprobs: list[float] = []
    turn_rewards: list[tuple[int, float]] = []
    info: dict[str, Any] = {
        "sample_index": request.sample_index,
        "turns": 0,
        "truncated": False,
        "tool_calls": 0,
        "tool_errors": 0,
        "success": False,
        "env_error": "",
        "env_return": 0.0,
        "turn_starts": [],  # response positions where each model turn starts
        # per model turn, the engine's own record of what it was given: (length, digest)
        "engine_contexts": [],
        "turn_versions": [],  # per model turn, the weight version that sampled it
    }
    ended = False
    try:
        first = await env.reset(task, request.seed)
        try:
            messages, _ = first
            prompt_ids = list(renderer.prompt_ids(messages, env.schemas))
        except Exception as e:
            raise EnvFailed("exception", f"bad reset result or messages: {e}") from e
        stop_ids = list(renderer.stop_token_ids)
        for turn in range(limits.max_turns):
            room = limits.max_episode_tokens - len(prompt_ids) - len(response)
            if room <= 0:
                break
            before = version()
            ids, lps, seen = await generate(
                prompt_ids + response,
                turn_seed(request.seed, turn),
                min(limits.max_tokens_per_turn, room),
                stop_ids,
            )
            info["turn_versions"].append(min(before, version()))
            info["turn_starts"].append(len(response))
            info["engine_contexts"].append((len(seen), digest(seen)))
            response += ids
            mask += [1] * len(ids)
            logprobs += lps
            info["turns"] += 1
            result = await env.step(renderer.action_text(ids))
            try:  # what an environment returns is untrusted too
                messages, reward, terminated, truncated, step_info = result
                reward, step_info = float(reward), dict(step_info or {})
            except (TypeError, ValueError) as e:
                raise EnvFailed("exception", f"step returned {type(result).__name__}: {e}") from e
            info["tool_calls"] += int(step_info.get("tool_calls", 0))
            info["tool_errors"] += int(step_info.get("tool_errors", 0))
            info["success"] = bool(step_info.get("success", info["success"]))
            last_sampled = max((i for i, m in enumerate(mask) if m), default=-1)
            turn_rewards.append((last_sampled, reward))
            if terminated or truncated:
                ended, info["truncated"] = True, bool(truncated)
                break
            if turn == limits.max_turns - 1:
                break  # no turn left to answer the environment's reply
            # A turn cut at max_tokens_per_turn has no end-of-turn token: close it (not sampled,
            # mask 0) so that the environment's reply follows a well-formed turn.
            close = [] if ids and ids[-1] in stop_ids else list(renderer.turn_end_ids)
            try:
                delta = close + list(renderer.delta_ids(messages))
            except Exception as e:  # messages the chat template cannot render
                raise EnvFailed("exception", f"unrenderable messages: {e}") from e
            if len(prompt_ids) + len(response) + len(delta) >= limits.max_episode_tokens:
                break  # no room for the reply and another turn: cut here
            response += delta
            mask += [0] * len(delta)
            logprobs += [0.0] * len(delta)
    except EnvFailed as e:
        info["env_error"] = e.kind if e.kind == "timeout" else str(e)
        ended = True
    finally:
        await env.close(failed=bool(info["env_error"]))
    if not ended:
        info["truncated"] = True  # a limit cut the episode
    info["env_return"] = sum(r for _, r in turn_rewards)
    info["episode_s"] = time.perf_counter() - start
    return Sample(
        group_id=request.prompt_id,
        prompt_ids=prompt_ids,
        response_ids=response,
        rollout_logprobs=logprobs,
        response_mask=mask,
        turn_rewards=turn_rewards,
        prompt=request.prompt,
        answer=request.answer,
        fields=request.fields,
        finish_reason="length" if info["truncated"] else "stop",
        info=info,
    )


# ---------------------------------------------------------------------------- observability
def env_metrics(samples: list[Sample]) -> dict[str, float]:
    """env/* over the step's episodes (samples with a response_mask)."""
    eps = [s for s in samples if s.response_mask is not None]
    if not eps:
        return {}
    n = len(eps)
    errors = [s.info.get("env_error", "") for s in eps]
    return {
        "env/turns_mean": sum(s.info.get("turns", 0) for s in eps) / n,
        "env/episode_return_mean": sum(s.info.get("env_return", 0.0) for s in eps) / n,
        "env/truncated_frac": sum(bool(s.info.get("truncated")) for s in eps) / n,
        "env/tool_calls_per_episode": sum(s.info.get("tool_calls", 0) for s in eps) / n,
        "env/tool_errors": float(sum(s.info.get("tool_errors", 0) for s in eps)),
        "env/success_rate": sum(bool(s.info.get("success")) for s in eps) / n,
        "env/errors": float(sum(bool(e) and e != "timeout" for e in errors)),
        "env/timeouts": float(sum(e == "timeout" for e in errors)),
        "env/sampled_tokens_mean": sum(sum(s.response_mask) for s in eps) / n,
    }


def transcript(sample: Sample, decode: Callable[[list[int]], str]) -> list[dict[str, str]]:
    """The episode as alternating segments: {"by": "model"|"env", "text": ...}, in order."""
    out: list[dict[str, str]] = []
    ids, mask = sample.response_ids, sample.response_mask or [1] * len(sample.response_ids)
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or mask[i] != mask[start]:
            out.append({"by": "model" if mask[start] else "env", "text": decode(ids[start:i])})
            start = i
    return out
