"""The engine: a queue of generation requests and the step loop that serves them in batches.

Requests arrive from the event loop (``submit``) and are served by one worker thread, so
model compute never blocks the server. Requests waiting together are batched (same adapter,
oldest first, up to ``max_batch``); each step emits text deltas through the request's
callback, and a cancelled request (client gone) leaves its batch at the next step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from proxy.local.runner import Runner

log = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """One completion to produce; results are filled in by the engine."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    adapter: str | None = None
    seed: int | None = None
    on_delta: Callable[[str], None] | None = None
    """Called from the worker thread with each new piece of text."""
    on_done: Callable[[GenerationRequest], None] | None = None
    """Called from the worker thread once, when the request finished, failed or was cancelled."""
    cancelled: threading.Event = field(default_factory=threading.Event)
    output_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    error: BaseException | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None


class Engine:
    """Serves :class:`GenerationRequest` s for one :class:`Runner` on one worker thread."""

    def __init__(self, runner: Runner, max_batch: int = 8):
        if max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.runner = runner
        self.max_batch = max_batch
        self._pending: deque[GenerationRequest] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.num_batches = 0
        self.max_batch_seen = 0
        self._thread = threading.Thread(target=self._loop, name="tokenskip-engine", daemon=True)
        self._thread.start()

    def submit(self, request: GenerationRequest) -> None:
        total = len(request.prompt_ids) + request.max_new_tokens
        if total > self.runner.max_positions:
            raise ValueError(
                f"prompt ({len(request.prompt_ids)} tokens) + max_tokens ({request.max_new_tokens}) "
                f"exceeds the model's context of {self.runner.max_positions} tokens"
            )
        if request.adapter is not None and request.adapter not in self.runner.adapters:
            raise ValueError(f"unknown adapter '{request.adapter}'")
        with self._cond:
            self._pending.append(request)
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _next_batch(self) -> list[GenerationRequest]:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return []
            adapter = self._pending[0].adapter
            batch = [r for r in self._pending if r.adapter == adapter][: self.max_batch]
            for r in batch:
                self._pending.remove(r)
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            live = [r for r in batch if not r.cancelled.is_set()]
            for r in batch:
                if r.cancelled.is_set():
                    self._finish(r, "cancelled")
            if not live:
                continue
            try:
                self.num_batches += 1
                self.max_batch_seen = max(self.max_batch_seen, len(live))
                self._generate(live)
            except BaseException as exc:  # report to every caller, keep serving
                log.exception("generation failed for a batch of %d", len(live))
                for r in live:
                    if r.finish_reason is None:
                        r.error = exc
                        self._finish(r, "error")

    def _finish(self, request: GenerationRequest, reason: str) -> None:
        request.finish_reason = reason
        request.finished_at = time.perf_counter()
        if request.on_done is not None:
            request.on_done(request)

    def _generate(self, batch: list[GenerationRequest]) -> None:
        runner = self.runner
        tokenizer = runner.tokenizer
        generators = [_generator(r.seed) for r in batch]
        with runner.activate(batch[0].adapter):
            logits, cache, mask, positions = runner.prefill([r.prompt_ids for r in batch])
            active = list(range(len(batch)))
            emitted = [0] * len(batch)  # characters of text already sent per row
            while active:
                tokens = torch.full((len(batch),), runner.pad_id, dtype=torch.long)
                for row in active:
                    tokens[row] = _sample(logits[row], batch[row], generators[row])
                still = []
                for row in active:
                    request = batch[row]
                    if request.cancelled.is_set():
                        self._finish(request, "cancelled")
                        continue
                    token = int(tokens[row])
                    if request.first_token_at is None:
                        request.first_token_at = time.perf_counter()
                    if token in runner.eos_ids:
                        self._flush(request, emitted, row, final=True)
                        self._finish(request, "stop")
                        continue
                    request.output_ids.append(token)
                    request.text = tokenizer.decode(request.output_ids, skip_special_tokens=True)
                    reason = _stop_reason(request)
                    self._flush(request, emitted, row, final=reason is not None)
                    if reason is not None:
                        self._finish(request, reason)
                        continue
                    still.append(row)
                active = still
                if active:
                    logits, cache, mask, positions = runner.decode(tokens, cache, mask, positions)

    @staticmethod
    def _flush(request: GenerationRequest, emitted: list[int], row: int, final: bool) -> None:
        """Send the text not sent yet, holding back a partial UTF-8 character mid-stream."""
        text = request.text
        end = len(text)
        if not final and text.endswith("\ufffd"):
            end = len(text.rstrip("\ufffd"))
        if end > emitted[row] and request.on_delta is not None:
            request.on_delta(text[emitted[row] : end])
        emitted[row] = max(emitted[row], end)


def _generator(seed: int | None) -> torch.Generator | None:
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def _sample(
    logits: torch.Tensor, request: GenerationRequest, generator: torch.Generator | None
) -> int:
    """Greedy at temperature 0, else temperature + nucleus sampling. logits: (vocab,)."""
    if request.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.cpu() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < request.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_reason(request: GenerationRequest) -> str | None:
    for stop in request.stop:
        at = request.text.find(stop)
        if at >= 0:
            request.text = request.text[:at]
            return "stop"
    if len(request.output_ids) >= request.max_new_tokens:
        return "length"
    return None
