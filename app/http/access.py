"""Who may drive the API from where: the rules the Guard applies before any route runs.

Without tokens the API trusts whatever can reach 127.0.0.1, and a web page the user visits
can reach it too. So a request must name a host the server is meant to be reached by (a DNS
rebinding attack names the attacker's), a state change must not come from another origin,
and a body must be declared JSON (a page can send text/plain or a form without the
browser's CORS preflight, but not application/json). Headers whose duplicates would be read
differently by different parties are refused outright."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from app.settings import Settings

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "[::]"})  # noqa: S104 - names, not a bind
SINGLE_HEADERS = ("host", "authorization", "content-length", "content-type", "transfer-encoding",
                  "idempotency-key", "origin", "sec-fetch-site")
"""Headers a request may carry at most once: with two, one reader takes the first and another
the last (a proxy authenticates one token, we another; a body is framed two ways)."""
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON = "application/json"


def normalize_host(value: str) -> str:
    """A Host header or a host setting as a comparable name: lower case, without the port or
    a trailing dot; an IPv6 address in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        end = value.find("]")
        return value[:end + 1] if end > 0 else value
    if value.count(":") > 1:  # a bare IPv6 address (a setting, never a Host header)
        return f"[{value}]"
    name, _, port = value.partition(":")
    return (name if port.isdigit() or not port else value).rstrip(".")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The host names the API answers to; None: any (SKIPLOCK_ALLOWED_HOSTS=*)."""
    given = [h.strip() for h in settings.allowed_hosts.split(",") if h.strip()]
    if "*" in given:
        return None
    if given:
        return frozenset(normalize_host(h) for h in given)
    own = normalize_host(settings.host)
    return LOOPBACK_NAMES | ({own} - WILDCARD_ADDRESSES)


def duplicated(raw_headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The first header of SINGLE_HEADERS that appears more than once, if any."""
    seen: set[str] = set()
    for raw, _ in raw_headers:
        name = raw.decode("latin-1").lower()
        if name in seen and name in SINGLE_HEADERS:
            return name
        seen.add(name)
    return None


def cross_origin(method: str, headers: Mapping[str, str]) -> str | None:
    """Why a state change looks like it comes from another site's page, or None. Clients
    that are not browsers send neither header and pass; a browser's own navigation sends
    Sec-Fetch-Site: none."""
    if method in SAFE_METHODS:
        return None
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {site!r}"
    origin = headers.get("origin")
    if origin is not None:
        netloc = urlsplit(origin).netloc.lower() if "://" in origin else ""
        if not netloc or netloc != headers.get("host", "").lower():
            return f"Origin {origin!r} is not this server"
    return None


def has_body(headers: Mapping[str, str]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0").strip() not in ("", "0")


def is_json(content_type: str | None) -> bool:
    return content_type is not None and content_type.partition(";")[0].strip().lower() == JSON
