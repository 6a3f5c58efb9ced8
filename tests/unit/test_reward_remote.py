"""reward.kind=remote against a local server on 127.0.0.1 that is slow, flaky or wrong:
retries counted, no sample lost, concurrency never above the limit, 4xx never retried,
errors name the URL and the status. Only loopback traffic."""

import time

import pytest
from reward_server import RewardServer

from rlhf.batch import Sample
from rlhf.config import RemoteRewardConfig, RewardConfig
from rlhf.reward.actor import RewardActor, reward_metrics


@pytest.fixture
def server():
    s = RewardServer()
    yield s
    s.close()


def _samples(n):
    # distinct prompts (the server counts attempts per prompt); every third answer is right
    return [
        Sample(group_id=i // 4, prompt=f"p{i}", response=str(i % 3), answer="0") for i in range(n)
    ]


def _actor(url, **kw):
    remote = RemoteRewardConfig(
        url=url,
        **{"max_concurrency": 4, "timeout_s": 2.0, "max_retries": 3, "backoff_s": 0.01, **kw},
    )
    return RewardActor(RewardConfig(kind="remote", remote=remote, fallback=-1.0), "addition")


def test_flaky_server_retries_lose_nothing_and_respect_the_limit(server):
    server.mode, server.fail_times = "flaky", 2
    out = _actor(server.url).score(_samples(48))
    assert [s.reward for s in out] == [float(i % 3 == 0) for i in range(48)]  # none lost
    assert not any("reward_error" in s.info for s in out)
    m = reward_metrics(out)
    assert m["reward/retries"] == 2 * 48 and server.requests == 3 * 48
    assert 1 < server.max_in_flight <= 4  # concurrent, never above the limit


def test_batched_requests(server):
    out = _actor(server.url, batch_size=5).score(_samples(23))
    assert [s.reward for s in out] == [float(i % 3 == 0) for i in range(23)]
    assert server.requests == 5  # ceil(23 / 5)


def test_4xx_is_not_retried_and_names_url_and_status(server):
    server.mode = "status400"
    out = _actor(server.url).score(_samples(6))
    assert server.requests == 6
    err = out[0].info["reward_error"]
    assert err.startswith("exception: RemoteRewardError") and server.url in err and "400" in err
    assert [s.reward for s in out] == [-1.0] * 6
    assert reward_metrics(out)["reward/errors"] == 6 and reward_metrics(out)["reward/retries"] == 0


def test_5xx_gives_up_after_max_retries(server):
    server.mode, server.fail_times = "flaky", 100
    out = _actor(server.url, max_retries=2).score(_samples(3))
    assert server.requests == 3 * 3
    assert all("HTTP 503 after 3 attempts" in s.info["reward_error"] for s in out)


def test_slow_server_times_out_within_the_budget(server):
    server.mode = "slow"
    t0 = time.monotonic()
    out = _actor(server.url, timeout_s=0.3, max_retries=1).score(_samples(4))
    assert time.monotonic() - t0 < 2 * 0.3 + 0.01 + 1.5
    assert [s.info["reward_error"] for s in out] == ["timeout"] * 4
    assert reward_metrics(out)["reward/timeouts"] == 4


@pytest.mark.parametrize(
    "mode, error", [("notjson", "reply is not JSON"), ("string", "bad type str"), ("nan", "nan")]
)
def test_wrong_replies_give_the_fallback(server, mode, error):
    server.mode = mode
    out = _actor(server.url).score(_samples(2))
    assert (
        all(error in s.info["reward_error"] for s in out) and [s.reward for s in out] == [-1.0] * 2
    )


def test_wrong_batch_length(server):
    server.mode = "wronglen"
    out = _actor(server.url, batch_size=4).score(_samples(4))
    assert all("expected a list of 4 rewards" in s.info["reward_error"] for s in out)


def test_connection_refused_is_retried_and_named():
    url = "http://127.0.0.1:9/score"  # discard port: nothing listens
    out = _actor(url, max_retries=2).score(_samples(2))
    assert all(url in s.info["reward_error"] and s.info["reward_retries"] == 2 for s in out)


def test_bearer_token_comes_from_the_environment(server, monkeypatch):
    monkeypatch.setenv("RLHF_TEST_REWARD_TOKEN", "tok-123")
    _actor(server.url, api_key_env="RLHF_TEST_REWARD_TOKEN").score(_samples(2))
    assert server.auth == ["Bearer tok-123"] * 2
