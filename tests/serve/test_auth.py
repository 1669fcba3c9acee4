"""serve/auth.py without a service: key digests, constant-time identification, token buckets, strong budgets."""

import pytest

from index.errors import ConfigError
from serve.auth import ANONYMOUS, KeyRing, Limits, RateLimited, TokenBucket, Unauthorized, digest, load_digests


def test_keys_from_digests_a_file_and_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "keys"
    path.write_text(f"# one per line\nsk-file\nsha256:{digest('sk-hashed')}\n")
    monkeypatch.setenv("TURNOUT_TEST_KEYS", "sk-env-1, sk-env-2")
    ring = KeyRing(load_digests([digest("sk-config")], str(path), "TURNOUT_TEST_KEYS"))
    for key in ("sk-config", "sk-file", "sk-hashed", "sk-env-1", "sk-env-2"):
        assert ring.identify(f"Bearer {key}") == digest(key)[:12]
    for header, message in [(None, "missing API key"), ("Basic abc", "missing API key"), ("Bearer ", "missing"),
                            ("Bearer sk-wrong", "invalid API key")]:
        with pytest.raises(Unauthorized, match=message):
            ring.identify(header)


def test_auth_off_without_keys_and_bad_digests_are_config_errors(tmp_path):
    assert KeyRing([]).identify(None) == ANONYMOUS
    with pytest.raises(ConfigError, match="not 64 hex digits"):
        load_digests(["abc"])
    with pytest.raises(ConfigError, match="api_keys_file"):
        load_digests([], str(tmp_path / "missing"))


def test_token_bucket_refills_at_its_rate():
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=3, clock=lambda: now[0])
    for _ in range(3):
        bucket.take()
    with pytest.raises(RateLimited) as info:
        bucket.take()
    assert info.value.retry_after == pytest.approx(0.5)
    now[0] = 0.5
    bucket.take()  # one token back after 1/rate seconds


def test_strong_budget_caps_the_share_of_billed_calls():
    limits = Limits(requests_per_s=None, burst=1, max_strong_share=0.5, strong_window=4)
    limits.charge("k", "strong").settle(billed=True)  # a first call may be strong
    with pytest.raises(RateLimited, match="at most 50%") as info:
        limits.charge("k", "strong")  # 2 of 2 would be 100 %
    assert info.value.retry_after == 1.0 and info.value.code == "strong_budget_exceeded"
    fallback = limits.charge("k", "strong", fallback=True)
    assert fallback.side == "weak"  # a fallback goes where the budget allows
    fallback.settle(billed=False)  # not billed (the upstream failed): makes no room
    with pytest.raises(RateLimited):
        limits.charge("k", "strong")
    for _ in range(2):
        limits.charge("k", "weak").settle(billed=True)
    limits.charge("k", "strong").settle(billed=True)  # 2 of 4: at the cap, allowed
    assert list(limits.budgets["k"].calls) == [True, False, False, True]


def test_calls_in_flight_count_as_strong_and_moves_are_checked():
    limits = Limits(requests_per_s=None, burst=1, max_strong_share=0.4, strong_window=10)
    for _ in range(2):
        limits.charge("k", "weak").settle(billed=True)
    held = limits.charge("k", "strong")  # 1 of 3, in flight
    with pytest.raises(RateLimited):
        limits.charge("k", "strong")  # a concurrent second one would make 2 of 4
    weak = limits.charge("k", "weak")
    assert not weak.move("strong")  # a failover to strong is checked like a decision
    held.settle(billed=True)
    weak.settle(billed=False)
    assert limits.budgets["k"].pending_strong == 0 and list(limits.budgets["k"].calls) == [False, False, True]


def test_a_zero_share_refuses_the_first_strong_call():
    limits = Limits(requests_per_s=None, burst=1, max_strong_share=0.0, strong_window=10)
    with pytest.raises(RateLimited):
        limits.charge("k", "strong")
    assert Limits(None, 1, None, 10).charge("k", "strong").side == "strong"  # no cap: always allowed


def test_limits_are_per_key():
    now = [0.0]
    limits = Limits(requests_per_s=1.0, burst=1, max_strong_share=None, strong_window=10, clock=lambda: now[0])
    limits.admit("a")
    limits.admit("b")  # another key has its own bucket
    with pytest.raises(RateLimited):
        limits.admit("a")
