"""Prompt-cache safety, measured: how much of each compressed request's prefix is byte for
byte a prefix an earlier request sent.

Provider prompt caches bill a repeated prefix at a fraction of its price, so a compressor
must send the earlier turns of a conversation exactly as it sent them before. Compression
here depends only on each message and the policy (:mod:`tokenskip.proxy.serving.prompt`), which makes
that hold by construction; :class:`PrefixTracker` checks it on live traffic. It keeps a
bounded set of digests of every message-boundary prefix the gateway sent upstream and, for a
new request, finds the longest prefix seen before: its bytes are the ``prefix_bytes_identical``
that ``/v1/savings`` reports beside the compressed requests' total bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

from tokenskip.proxy import jsonio

CAPACITY = 100_000
"""Prefix digests kept (16 bytes each, oldest dropped first)."""


def _message_bytes(message: dict[str, Any]) -> bytes:
    return jsonio.dumps(message, sort_keys=True)


class PrefixTracker:
    """Digests of message-boundary prefixes sent upstream, per model (thread-safe)."""

    def __init__(self, capacity: int = CAPACITY):
        self.capacity = capacity
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()

    def observe(self, model: str, messages: list[dict[str, Any]]) -> tuple[int, int]:
        """(bytes of the longest prefix sent before, bytes of all messages), then remember
        every prefix of ``messages``."""
        h = hashlib.blake2b(model.encode(), digest_size=16)
        keys: list[tuple[bytes, int]] = []
        total = 0
        for message in messages:
            data = _message_bytes(message)
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
            total += len(data)
            keys.append((h.digest(), total))
        identical = 0
        with self._lock:
            for key, upto in keys:
                if key in self._seen:
                    identical = upto
                    self._seen.move_to_end(key)
                else:
                    self._seen[key] = None
            while len(self._seen) > self.capacity:
                self._seen.popitem(last=False)
        return identical, total
