"""Who is calling: the bearer API key, one-time login codes and the browser sessions they turn into.

The chat page never sees the API key. `pixdesk open` asks the daemon (with the key) for a one-time code and
opens `http://127.0.0.1:PORT/#code=CODE`; the page posts the code to /auth/exchange and gets an HttpOnly,
SameSite=Strict session cookie. Codes are random, single use and expire after CODE_TTL_S seconds.
Everything lives in memory: a daemon restart logs every browser out.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable

SESSION_COOKIE = "pixdesk_session"
CODE_TTL_S = 120.0
MAX_CODES = 32  # outstanding codes; the oldest is dropped beyond this
MAX_SESSIONS = 256


class Authenticator:
    def __init__(self, api_key: str, *, session_s: float, clock: Callable[[], float] = time.monotonic):
        self._key = api_key.encode()
        self.session_s = session_s
        self.clock = clock
        self._codes: dict[str, float] = {}  # code -> expiry
        self._sessions: dict[str, float] = {}  # session token -> expiry
        self._lock = threading.Lock()

    def check_key(self, presented: bytes) -> bool:
        """Constant-time comparison of a presented key (raw header bytes, any length, any bytes)."""
        return hmac.compare_digest(presented, self._key)

    def new_code(self) -> str:
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._expire(self._codes)
            while len(self._codes) >= MAX_CODES:
                self._codes.pop(next(iter(self._codes)))
            self._codes[code] = self.clock() + CODE_TTL_S
        return code

    def exchange(self, code: str) -> str | None:
        """A new session token for a valid unused code (the code is spent either way), else None."""
        with self._lock:
            self._expire(self._codes)
            match = next((c for c in self._codes if hmac.compare_digest(c.encode(), code.encode())), None)
            if match is None:
                return None
            del self._codes[match]
            self._expire(self._sessions)
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            token = secrets.token_urlsafe(32)
            self._sessions[token] = self.clock() + self.session_s
            return token

    def check_session(self, token: str) -> bool:
        if not token:
            return False
        with self._lock:
            self._expire(self._sessions)
            return any(hmac.compare_digest(t.encode(), token.encode()) for t in self._sessions)

    def _expire(self, table: dict[str, float]) -> None:
        now = self.clock()
        for k in [k for k, exp in table.items() if exp <= now]:
            del table[k]


def session_cookie(token: str) -> str:
    return f"{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
