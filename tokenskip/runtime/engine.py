"""The engine: a queue of generation requests and the step loop that serves them in batches.

Requests arrive from the event loop (``submit``) and are served by one worker thread, so
model compute never blocks the server. Batching is continuous: between decode steps,
finished rows leave the batch and waiting requests for the same adapter join it (oldest
first, up to ``max_batch`` rows), so a slot never idles behind the longest generation. Each
step emits text deltas through the request's callback, and a cancelled request (client gone)
leaves its batch at the next step.

With ``prefill_chunk`` set, a prompt longer than it that arrives while others decode is
admitted in chunks (Sarathi's chunked prefill): each step runs one chunk of it and then the
running rows' decode step, so their streams keep moving while it arrives, instead of
stalling for the whole prompt; once its last chunk is in, it joins the batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tokenskip.runtime.early_exit import EarlyExit, EarlyExitStats, exit_step
from tokenskip.runtime.runner import Batch, Runner
from tokenskip.runtime.speculative import SpeculativeSettings, SpeculativeStats

log = logging.getLogger(__name__)


@dataclass
class GenerationRequest:
    """One completion to produce; results are filled in by the engine."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted from a token's logit once per time it was generated so far."""
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from a token's logit once it has been generated at all."""
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
    stop_sequence: str | None = None
    """The stop string that ended the text (None: it ended otherwise)."""
    error: BaseException | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    emitted: int = field(default=0, repr=False)
    """Characters of ``text`` already sent through ``on_delta``."""
    generator: torch.Generator | None = field(default=None, repr=False)
    force_at: int | None = None
    """Budget forcing (s1): once this many tokens are out and no final answer is written
    (``answered``), ``force_ids`` (the answer cue) are fed as the next tokens and the model
    gets ``force_answer_tokens`` more: the same sequence and KV cache, continued."""
    force_ids: list[int] = field(default_factory=list)
    force_answer_tokens: int = 32
    answered: Callable[[str], bool] | None = None
    """Whether a text already holds a final answer (then nothing is forced)."""
    forced_at: int | None = None
    """Output index where the cue went in (None: nothing was forced)."""
    _forced: deque[int] = field(default_factory=deque, repr=False)
    _stop_from: int | None = field(default=None, repr=False)
    """Budget forcing: stop strings are searched from here on (after the cue)."""


class Engine:
    """Serves :class:`GenerationRequest` s for one :class:`Runner` on one worker thread."""

    def __init__(
        self,
        runner: Runner,
        max_batch: int = 8,
        speculative: SpeculativeSettings | None = None,
        early_exit: EarlyExit | None = None,
        prefill_chunk: int | None = None,
    ):
        if max_batch <= 0:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        if prefill_chunk is not None and prefill_chunk <= 0:
            raise ValueError(f"prefill_chunk must be positive, got {prefill_chunk}")
        self.prefill_chunk = prefill_chunk
        """Tokens of a long prompt prefilled per step while others decode (None: the whole
        prompt in one step)."""
        self._filling: tuple[GenerationRequest, Batch | None, int] | None = None
        """The prompt being prefilled in chunks: its request, its cache so far, tokens in."""
        self.num_chunks = 0
        """Chunks run for prompts admitted in chunks."""
        self.runner = runner
        self.max_batch = max_batch
        if speculative is not None and not speculative.skip and not speculative.lookup:
            # a draft with every layer costs a full step and saves nothing
            log.info("speculative decoding off: the skip set is empty and lookup is off")
            speculative = None
        self.speculative = speculative
        """Self-speculative decoding (lookup and layer-skipping drafts) for a lone greedy
        request (None: off)."""
        self.spec_stats = SpeculativeStats()
        if speculative is not None and early_exit is not None:
            raise ValueError("speculative decoding and early exit exclude each other")
        self.early_exit = early_exit
        """Adaptive early exit for a lone greedy request (None: off; lossy)."""
        self.exit_stats = EarlyExitStats()
        self._k = speculative.k if speculative else 1
        self._pending: deque[GenerationRequest] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self.num_batches = 0
        """Prefills run: each admits one group of waiting requests into the running batch."""
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

    # -- the worker ------------------------------------------------------------------------
    def _admit(self, adapter: str | None, room: int, wait: bool) -> list[GenerationRequest]:
        """Up to ``room`` pending requests, oldest first, while they use ``adapter``.

        With nothing running (``wait``) this blocks for work and takes the oldest request's
        adapter. Admission stops at the first request for another adapter, so the running
        batch drains and that request is served next: no adapter waits behind a busy one.
        """
        with self._cond:
            while wait and not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping or not self._pending:
                return []
            if wait:
                adapter = self._pending[0].adapter
            taken: list[GenerationRequest] = []
            while self._pending and len(taken) < room and self._pending[0].adapter == adapter:
                taken.append(self._pending.popleft())
            return taken

    def _loop(self) -> None:
        rows: list[GenerationRequest] = []
        batch: Batch | None = None
        while True:
            if self._stopping:
                self._cancel_all(rows + ([self._filling[0]] if self._filling else []))
                return
            adapter = rows[0].adapter if rows else None
            can_join = (batch is None or batch.resizable) and self._filling is None
            busy = bool(rows) or self._filling is not None
            new = (
                self._admit(adapter, self.max_batch - len(rows), wait=not busy) if can_join else []
            )
            if not busy and not new:
                return  # stopping
            try:
                new = [r for r in new if not self._finish_if_cancelled(r)]
                if rows and new and self.prefill_chunk is not None:
                    long = [r for r in new if len(r.prompt_ids) > self.prefill_chunk]
                    if long:
                        self._filling = (long[0], None, 0)
                        self._requeue(long[1:])
                        new = [r for r in new if all(r is not x for x in long)]
                if new:
                    with self.runner.activate(new[0].adapter):
                        joined = self.runner.prefill([r.prompt_ids for r in new])
                    self.num_batches += 1
                    rows, batch = rows + new, joined if batch is None else batch.merge(joined)
                if self._filling is not None:
                    rows, batch = self._fill(rows, batch)
                self.max_batch_seen = max(self.max_batch_seen, len(rows))
                if not rows:
                    continue
                assert batch is not None
                rows, batch = self._step(rows, batch)
            except BaseException as exc:  # report to every caller, keep serving
                log.exception("generation failed for a batch of %d", len(rows))
                if self._filling is not None:
                    rows, self._filling = rows + [self._filling[0]], None
                for r in rows:
                    if r.finish_reason is None:
                        r.error = exc
                        self._finish(r, "error")
                rows, batch = [], None

    def _requeue(self, requests: list[GenerationRequest]) -> None:
        """Put admitted requests back at the head of the queue, in their order."""
        with self._cond:
            self._pending.extendleft(reversed(requests))

    def _fill(
        self, rows: list[GenerationRequest], batch: Batch | None
    ) -> tuple[list[GenerationRequest], Batch | None]:
        """Run the next chunk of the prompt being admitted in chunks; when it is all in,
        the request joins the batch."""
        assert self._filling is not None and self.prefill_chunk is not None
        request, part, done = self._filling
        if self._finish_if_cancelled(request):
            self._filling = None
            return rows, batch
        chunk = request.prompt_ids[done : done + self.prefill_chunk]
        with self.runner.activate(request.adapter):
            part = self.runner.prefill_part(chunk, part)
        self.num_chunks += 1
        done += len(chunk)
        if done < len(request.prompt_ids):
            self._filling = (request, part, done)
            return rows, batch
        self._filling = None
        self.num_batches += 1
        return rows + [request], part if batch is None else batch.merge(part)

    def _step(self, rows: list[GenerationRequest], batch: Batch) -> tuple[list, Batch | None]:
        """Sample one token per row, retire finished rows, run the next decode step."""
        runner = self.runner
        tokens = torch.full((batch.size,), runner.pad_id, dtype=torch.long)
        still: list[int] = []
        for i, request in enumerate(rows):
            if request.finish_reason is not None or self._finish_if_cancelled(request):
                continue  # (a finished row rides along only in a cache that cannot drop it)
            if request.generator is None and request.seed is not None:
                request.generator = _generator(request.seed)
            if request._forced:
                token = request._forced.popleft()  # the answer cue, fed as it is
            else:
                token = _sample(batch.logits[i], request, request.generator)
            tokens[i] = token
            if request.first_token_at is None:
                request.first_token_at = time.perf_counter()
            if not self._accept(request, token):
                still.append(i)
        if not still:
            return [], None
        if len(still) < len(rows) and batch.resizable:
            batch = batch.keep(still)
            tokens = tokens[still]
            rows = [rows[i] for i in still]
        spec = self.speculative
        if spec is not None and self._lone_greedy(rows, batch):
            done = self._speculate(rows, batch, int(tokens[0]), spec)
            if done is not None:
                return done
            self.spec_stats.plain_steps += 1  # nothing to draft: a plain step
            self.spec_stats.tokens += 1
            self.spec_stats.layers_run += runner.num_layers
        if self.early_exit is not None and self._lone_greedy(rows, batch):
            with runner.activate(rows[0].adapter):
                logits, mask = exit_step(
                    runner.model,
                    int(tokens[0]),
                    batch.cache,
                    batch.mask,
                    int(batch.positions[0]),
                    self.early_exit,
                    self.exit_stats,
                )
            return rows, Batch(logits, batch.cache, mask, batch.positions + 1)
        with runner.activate(rows[0].adapter):
            return rows, runner.decode(tokens, batch)

    def _lone_greedy(self, rows: list[GenerationRequest], batch: Batch) -> bool:
        """One greedy row without penalties and nobody waiting: the case speculation and early
        exit serve (their drafts are checked against the model's unpenalized argmax)."""
        r = rows[0]
        return (
            len(rows) == 1
            and r.temperature <= 0
            and not _penalized(r)
            and batch.resizable
            and not self._pending
            and self._filling is None
            and r.force_at is None
        )

    def _accept(self, request: GenerationRequest, token: int) -> bool:
        """Append one sampled token; True when the request is finished by it."""
        runner = self.runner
        if token in runner.eos_ids:
            self._flush(request, final=True)
            self._finish(request, "stop")
            return True
        request.output_ids.append(token)
        request.text = runner.tokenizer.decode(request.output_ids, skip_special_tokens=True)
        if request._forced:
            # the cue is being fed: stop strings apply to the answer after it, the cap always
            reason = "length" if len(request.output_ids) >= request.max_new_tokens else None
        else:
            if request.forced_at is not None and request._stop_from is None:
                request._stop_from = len(request.text)  # the cue is in: the answer starts
            reason = _stop_reason(request)
        if reason is None and _force_now(request):
            request.forced_at = len(request.output_ids)
            if request.answered is not None and request.answered(request.text):
                # the answer has begun: let it finish (answer_tokens more), cue nothing
                request._stop_from = 0
                request.max_new_tokens = min(
                    request.max_new_tokens, request.forced_at + request.force_answer_tokens
                )
                request.forced_at = None
                request.force_at = None
            else:
                request._forced.extend(request.force_ids)
                request.max_new_tokens = min(
                    request.max_new_tokens,
                    request.forced_at + len(request.force_ids) + request.force_answer_tokens,
                )
        self._flush(request, final=reason is not None)
        if reason is not None:
            self._finish(request, reason)
            return True
        return False

    def _speculate(
        self, rows: list[GenerationRequest], batch: Batch, token: int, spec: SpeculativeSettings
    ) -> tuple[list, Batch | None] | None:
        """A lone greedy row: a lookup draft, else a draft with layers skipped, verified with
        all layers. None when there is nothing to draft (the caller runs a plain step)."""
        from tokenskip.runtime.speculative import lookup_draft, speculate, verify

        request = rows[0]
        budget = request.max_new_tokens - len(request.output_ids)
        drafts = (
            lookup_draft(
                request.prompt_ids + request.output_ids,
                min(spec.lookup_tokens, budget),
                spec.lookup_ngram,
            )
            if spec.lookup
            else []
        )
        if not drafts and not spec.skip:
            return None
        stats = self.spec_stats
        n = self.runner.num_layers
        args = (batch.cache, batch.mask, int(batch.positions[0]))
        with self.runner.activate(request.adapter):
            if drafts:
                accepted, logits, mask = verify(self.runner.model, token, drafts, *args)
                k = len(drafts)
                stats.lookup_rounds += 1
                stats.lookup_drafted += k
                stats.lookup_accepted += len(accepted)
                stats.layers_run += n
            else:
                k = max(1, min(self._k, spec.max_k, budget))
                accepted, logits, mask = speculate(self.runner.model, token, *args, spec.skip, k)
                stats.layers_run += k * (n - len(spec.skip)) + n
                self._k = self._k + 1 if len(accepted) == k else max(1, self._k - 1)
        stats.rounds += 1
        stats.drafted += k
        stats.accepted += len(accepted)
        stats.tokens += len(accepted) + 1
        for t in accepted:
            if self._accept(request, t):
                return [], None
        step = len(accepted) + 1
        return rows, Batch(logits, batch.cache, mask, batch.positions + step)

    def _finish(self, request: GenerationRequest, reason: str) -> None:
        request.finish_reason = reason
        request.finished_at = time.perf_counter()
        if request.on_done is not None:
            request.on_done(request)

    def _cancel_all(self, rows: list[GenerationRequest]) -> None:
        """On close: nothing in flight or queued is left without an answer."""
        with self._cond:
            waiting = list(self._pending)
            self._pending.clear()
        for r in rows + waiting:
            if r.finish_reason is None:
                self._finish(r, "cancelled")

    def _finish_if_cancelled(self, request: GenerationRequest) -> bool:
        if request.cancelled.is_set():
            self._finish(request, "cancelled")
            return True
        return False

    @staticmethod
    def _flush(request: GenerationRequest, final: bool) -> None:
        """Send the text not sent yet, holding back mid-stream a partial UTF-8 character and
        an ending that may be the start of a stop string (a stop string is never sent)."""
        text = request.text
        end = len(text)
        if not final and text.endswith("\ufffd"):
            end = len(text.rstrip("\ufffd"))
        if not final and request.stop:
            end -= _stop_prefix(text[:end], request.stop)
        if end > request.emitted and request.on_delta is not None:
            request.on_delta(text[request.emitted : end])
        request.emitted = max(request.emitted, end)


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
    if _penalized(request):
        logits = penalize(
            logits, request.output_ids, request.frequency_penalty, request.presence_penalty
        )
    if request.temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.cpu() / request.temperature, dim=-1)
    if request.top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(-1) - sorted_probs < request.top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _penalized(request: GenerationRequest) -> bool:
    return request.frequency_penalty != 0 or request.presence_penalty != 0


def penalize(
    logits: torch.Tensor, generated: list[int], frequency: float, presence: float
) -> torch.Tensor:
    """OpenAI's frequency and presence penalties over the tokens generated so far (the prompt
    is not counted): ``logit[j] - count[j] * frequency - (count[j] > 0) * presence``."""
    if not generated:
        return logits
    vocab = logits.shape[-1]
    ids = torch.tensor(generated, dtype=torch.long, device=logits.device)
    counts = torch.bincount(ids, minlength=vocab)[:vocab].float()  # in fp32, even under bf16
    return logits.float() - counts * frequency - (counts > 0).float() * presence


def _force_now(request: GenerationRequest) -> bool:
    """True when budget forcing should start on this token."""
    return (
        request.force_at is not None
        and request.forced_at is None
        and len(request.output_ids) >= request.force_at
    )


def _stop_prefix(text: str, stops: list[str]) -> int:
    """Length of the longest ending of ``text`` that begins one of ``stops``."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


def _stop_reason(request: GenerationRequest) -> str | None:
    start = request._stop_from or 0
    for stop in request.stop:
        at = request.text.find(stop, start)
        if at >= 0:
            request.text = request.text[:at]
            request.stop_sequence = stop
            return "stop"
    if len(request.output_ids) >= request.max_new_tokens:
        return "length"
    return None
