"""Resumable generation cache: one JSON line per finished sample, appended as it finishes.

Keys hash everything that determines a greedy generation (generator, adapter, prompt,
budget), so a rerun skips what is done and a crash loses only the samples in flight.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from tokenskip.runtime.generate import Generation


def sample_key(**parts: Any) -> str:
    return hashlib.sha256(
        json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()
    ).hexdigest()[:32]


class GenerationCache:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, Generation] = {}
        self.num_corrupt = 0
        if self.path.exists():
            with self.path.open(encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                        self._entries[record["key"]] = Generation(
                            record["text"],
                            record["output_tokens"],
                            record["finished"],
                            record["seconds"],
                            tuple(record.get("token_ids", ())),
                        )
                    except (ValueError, KeyError, TypeError):
                        self.num_corrupt += 1  # a line cut by a crash: that sample runs again

    def get(self, key: str) -> Generation | None:
        return self._entries.get(key)

    def put(self, key: str, g: Generation) -> None:
        record = {
            "key": key,
            "text": g.text,
            "output_tokens": g.output_tokens,
            "finished": g.finished,
            "seconds": g.seconds,
            "token_ids": list(g.token_ids),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._entries[key] = g
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line)
                f.flush()

    def __len__(self) -> int:
        return len(self._entries)


class ThroughputLog:
    """Batched-throughput measurements, one JSON line per generation pass, so a resumed run
    still reports the speed measured while its samples were generated (summed over passes)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._totals: dict[str, dict[str, float]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    r = json.loads(line)
                    self._add(r["key"], float(r["wall_s"]), int(r["tokens"]), int(r["samples"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash: that pass is not counted

    def _add(self, key: str, wall_s: float, tokens: int, samples: int) -> None:
        t = self._totals.setdefault(key, {"wall_s": 0.0, "tokens": 0, "samples": 0, "passes": 0})
        t["wall_s"] += wall_s
        t["tokens"] += tokens
        t["samples"] += samples
        t["passes"] += 1

    def add(self, key: str, wall_s: float, tokens: int, samples: int) -> None:
        self._add(key, wall_s, tokens, samples)
        record = {"key": key, "wall_s": wall_s, "tokens": tokens, "samples": samples}
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def total(self, key: str) -> dict[str, float] | None:
        return self._totals.get(key)
