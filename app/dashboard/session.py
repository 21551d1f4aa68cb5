"""The dashboard's session: a signed cookie naming the token a browser logged in with, and
the CSRF token its forms carry.

The cookie holds {token fingerprint, CSRF token, expiry}, signed with HMAC-SHA256 under the
session key (SKIPLOCK_SESSION_SECRET, else a random key per process). It never holds the API
token itself: the fingerprint is an HMAC of it under the same key, looked up among the
configured tokens on every request, so removing a token from the configuration ends its
sessions at once, and its role is always the current one. HttpOnly (no script reads it),
SameSite=Strict (no other site's page sends it), Secure when served over https."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

from app.tokens import ApiToken, Role

COOKIE = "skiplock_session"
MAX_AGE = 12 * 3600
"""Seconds a session lasts; then the dashboard asks for the token again."""


@dataclass(frozen=True)
class Session:
    fingerprint: str  # "" before a login (and always without tokens)
    csrf: str
    expires: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Sessions:
    def __init__(self, secret: str, tokens: Sequence[ApiToken]) -> None:
        self.key = secret.encode() if secret else secrets.token_bytes(32)
        self.tokens = {self.fingerprint(t.secret): t for t in tokens}

    def fingerprint(self, token_secret: bytes) -> str:
        return hmac.new(self.key, b"token:" + token_secret, hashlib.sha256).hexdigest()[:32]

    def new(self, token: ApiToken | None = None) -> Session:
        """A fresh session (a fresh CSRF token), logged in as `token` if given."""
        return Session(self.fingerprint(token.secret) if token else "", secrets.token_urlsafe(24),
                       int(time.time()) + MAX_AGE)

    def encode(self, s: Session) -> str:
        payload = _b64(json.dumps([s.fingerprint, s.csrf, s.expires]).encode())
        return f"{payload}.{self._mac(payload)}"

    def decode(self, cookie: str | None) -> Session | None:
        """The session of a cookie this server signed and that has not expired, else None."""
        if not cookie or cookie.count(".") != 1:
            return None
        payload, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            fingerprint, csrf, expires = json.loads(base64.urlsafe_b64decode(payload + "=="))
        except (binascii.Error, ValueError, TypeError):
            return None
        if not (isinstance(fingerprint, str) and isinstance(csrf, str) and isinstance(expires, int)):
            return None
        return Session(fingerprint, csrf, expires) if expires > time.time() else None

    def token_of(self, s: Session) -> ApiToken | None:
        return self.tokens.get(s.fingerprint) if s.fingerprint else None

    def role_of(self, s: Session) -> Role | None:
        """What this session may do: its token's role; with no tokens configured, admin (the
        server then answers on loopback only, as the API does)."""
        if not self.tokens:
            return "admin"
        token = self.token_of(s)
        return token.role if token else None

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self.key, payload.encode(), hashlib.sha256).digest())


def csrf_ok(s: Session, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), s.csrf.encode())
