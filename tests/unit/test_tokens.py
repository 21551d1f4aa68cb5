"""SKIPLOCK_API_TOKENS: roles and rates parsed, and the rate limiter's arithmetic on a clock
the test moves."""

from __future__ import annotations

import pytest

from app.settings import Settings
from app.tokens import RateLimiter, may, parse_rate, parse_tokens, retry_after, role_needed


def test_a_bare_token_stays_admin_and_roles_and_rates_follow_in_either_order():
    a, b, c, d, e = parse_tokens("tokA, tokB:read ,tokC:submit:10/s,tokD:600/m:read,ab:read:admin")
    assert (a.secret, a.role, a.rate) == (b"tokA", "admin", None)
    assert (b.secret, b.role, b.rate) == (b"tokB", "read", None)
    assert (c.secret, c.role, c.rate and (c.rate.count, c.rate.period)) == (b"tokC", "submit", (10, 1.0))
    assert (d.secret, d.role, d.rate and (d.rate.count, d.rate.period)) == (b"tokD", "read", (600, 60.0))
    assert (e.secret, e.role) == (b"ab:read", "admin")


@pytest.mark.parametrize("raw", [":read", "tok,tok:read", ":admin:5/s"])
def test_a_bad_token_list_is_refused_at_start_up(raw: str):
    with pytest.raises(ValueError, match="SKIPLOCK_API_TOKENS"):
        Settings(api_tokens=raw)


def test_roles_needed_per_request():
    assert role_needed("GET", "/jobs") == "read" and role_needed("GET", "/") == "read"
    assert role_needed("POST", "/jobs") == "submit" and role_needed("POST", "/jobs/bulk") == "submit"
    for method, path in [("POST", "/jobs/x/retry"), ("POST", "/jobs/x/cancel"), ("POST", "/queues/q/pause"),
                         ("PUT", "/queues/q"), ("DELETE", "/queues/q"), ("POST", "/schedules/s/pause")]:
        assert role_needed(method, path) == "admin"
    assert may("admin", "submit") and may("submit", "read") and not may("read", "submit")
    assert not may("submit", "admin")


def test_the_limiter_serves_the_burst_then_says_exactly_when_the_next_is_served():
    now = [100.0]
    limiter = RateLimiter(clock=lambda: now[0])
    rate = parse_rate("3/m")
    assert rate is not None
    assert [limiter.take(b"k", rate) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take(b"k", rate)
    assert wait == pytest.approx(20.0)  # one place every 60/3 s
    assert limiter.take(b"k", rate) == pytest.approx(20.0)  # a refused request takes no place
    now[0] += wait - 0.001
    assert limiter.take(b"k", rate) > 0
    now[0] += 0.001
    assert limiter.take(b"k", rate) == 0.0
    assert limiter.take(b"k", rate) == pytest.approx(20.0)
    assert limiter.take(b"other", rate) == 0.0  # each token has its own
    assert retry_after(0.2) == "1" and retry_after(19.01) == "20" and retry_after(20.0) == "20"
