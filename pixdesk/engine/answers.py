"""Token ids of recent answers, by their text, so the next turn's prompt reuses exactly those ids.

Only answers whose ids decode to exactly the text the client saw are kept (not those cut by a stop
string). Memory only, bounded; holds a hash of the text, never the text.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict


class AnswerMemory:
    def __init__(self, capacity: int = 512):
        self.capacity = capacity
        self._items: OrderedDict[bytes, list[int]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(text: str) -> bytes:
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()

    def remember(self, text: str, ids: list[int]) -> None:
        # The chat format strips trailing spaces from assistant history; those ids would not match.
        if not ids or self.capacity <= 0 or text != text.rstrip(" "):
            return
        with self._lock:
            self._items[self._key(text)] = list(ids)
            self._items.move_to_end(self._key(text))
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def lookup(self, text: str) -> list[int] | None:
        with self._lock:
            ids = self._items.get(self._key(text))
            return list(ids) if ids is not None else None
