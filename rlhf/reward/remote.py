"""reward.kind=remote: score samples with an HTTP reward service.

Each request POSTs JSON `{"prompt", "response", "answer", "fields"}` (or a list of them when
`batch_size > 1`) and reads back a number, `{"reward": number}`, or (batched) a list of either.
Requests run concurrently on one `httpx.AsyncClient`, at most `max_concurrency` at a time per
reward actor, each under `timeout_s`. 5xx replies, timeouts and connection errors are retried
with exponential backoff (`backoff_s`, doubling) up to `max_retries` times; a 4xx is the
caller's fault and is never retried. A request that still fails gives its samples the fallback
with an error naming the URL and the status. The bearer token, if any, comes from the
environment variable named by `api_key_env` and never enters configs or logs.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from rlhf.config import RemoteRewardConfig


class RemoteRewardError(Exception):
    pass


def _value(item: Any) -> Any:
    return item.get("reward") if isinstance(item, dict) else item


class RemoteScorer:
    def __init__(self, cfg: RemoteRewardConfig):
        self.cfg = cfg
        key = os.environ.get(cfg.api_key_env, "") if cfg.api_key_env else ""
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}

    def score(self, samples: list) -> list[tuple[Any, str | None]]:
        return asyncio.run(self._score(samples))

    async def _score(self, samples: list) -> list[tuple[Any, str | None]]:
        import httpx

        cfg = self.cfg
        sem = asyncio.Semaphore(cfg.max_concurrency)
        chunks = [samples[i : i + cfg.batch_size] for i in range(0, len(samples), cfg.batch_size)]
        limits = httpx.Limits(max_connections=cfg.max_concurrency)
        async with httpx.AsyncClient(
            timeout=cfg.timeout_s, limits=limits, headers=self._headers, trust_env=False
        ) as client:
            results = await asyncio.gather(*(self._post(client, sem, c) for c in chunks))
        return [o for r in results for o in r]

    async def _post(
        self, client, sem: asyncio.Semaphore, chunk: list
    ) -> list[tuple[Any, str | None]]:
        import httpx

        cfg = self.cfg
        rows = [
            {"prompt": s.prompt, "response": s.response, "answer": s.answer, "fields": s.fields}
            for s in chunk
        ]
        body = rows if cfg.batch_size > 1 else rows[0]
        error, retries = "", 0
        for attempt in range(cfg.max_retries + 1):
            if attempt:
                retries += 1
                await asyncio.sleep(cfg.backoff_s * 2 ** (attempt - 1))
            try:
                async with sem:
                    resp = await client.post(cfg.url, json=body)
            except httpx.TimeoutException:
                error = "timeout"
                continue
            except httpx.TransportError as e:
                error = f"exception: RemoteRewardError: POST {cfg.url}: {type(e).__name__}: {e}"
                continue
            if resp.status_code >= 500:
                error = (
                    f"exception: RemoteRewardError: POST {cfg.url} -> HTTP {resp.status_code}"
                    f" after {attempt + 1} attempts: {resp.text[:100]}"
                )
                continue
            if resp.status_code >= 400:
                error = (
                    f"exception: RemoteRewardError: POST {cfg.url} -> HTTP {resp.status_code}"
                    f" (not retried): {resp.text[:100]}"
                )
                break
            out = self._parse(resp, len(chunk))
            for s in chunk:
                s.info["reward_retries"] = retries
            return out
        for s in chunk:
            s.info["reward_retries"] = retries
        return [(None, error[:300])] * len(chunk)

    def _parse(self, resp, n: int) -> list[tuple[Any, str | None]]:
        url = self.cfg.url
        try:
            data = resp.json()
        except ValueError:
            return [
                (
                    None,
                    f"exception: RemoteRewardError: POST {url} -> HTTP {resp.status_code}: "
                    f"reply is not JSON: {resp.text[:80]!r}",
                )
            ] * n
        if self.cfg.batch_size > 1:
            if not isinstance(data, list) or len(data) != n:
                got = f"a list of {len(data)}" if isinstance(data, list) else type(data).__name__
                return [
                    (
                        None,
                        f"exception: RemoteRewardError: POST {url}: expected a list of {n} "
                        f"rewards, got {got}",
                    )
                ] * n
            return [(_value(d), None) for d in data]
        return [(_value(data), None)]
