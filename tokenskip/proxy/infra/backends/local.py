"""The local backend: models served in-process by the engine, bridged onto asyncio.

The engine's worker thread calls back with text deltas; they cross into the event loop with
``call_soon_threadsafe``. If the consumer goes away (client disconnect, task cancelled), the
request is cancelled and leaves its batch at the next step.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from tokenskip.proxy.infra.backends.base import BackendError, Completion, Delta
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner

DEFAULT_MAX_TOKENS = 256
FORCING_PARAM = "_budget_forcing"
"""Params key under which the service hands a local model its
:class:`~tokenskip.reasoning.BudgetForcing` (never sent to any upstream)."""


@dataclass(frozen=True)
class LocalModel:
    """A served name: a base model (engine) plus an optional adapter."""

    engine: Engine
    adapter: str | None

    @property
    def tokenizer(self) -> Any:
        return self.engine.runner.tokenizer

    @property
    def delimiter(self) -> str | None:
        runner = self.engine.runner
        if self.adapter is None:
            return runner.base_delimiter
        return runner.adapters[self.adapter].delimiter


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


class LocalBackend:
    name = "local"

    def __init__(self) -> None:
        self.models: dict[str, LocalModel] = {}
        self.engines: dict[str, Engine] = {}

    def add_engine(
        self,
        base: str,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int,
        adapters: dict[str, str],
        speculative: Any = None,
        early_exit: Any = None,
    ) -> Engine:
        engine = Engine(
            Runner(model, tokenizer, adapters),
            max_batch=max_batch,
            speculative=speculative,
            early_exit=early_exit,
        )
        self.engines[base] = engine
        return engine

    def serve(self, served_name: str, base: str, adapter: str | None) -> None:
        self.models[served_name] = LocalModel(self.engines[base], adapter)

    def close(self) -> None:
        for engine in self.engines.values():
            engine.close()

    def max_positions(self, model: str) -> int:
        """The longest prompt + completion the served model's engine takes, in tokens."""
        return self.models[model].engine.runner.max_positions

    def prompt_ids(self, model: str, messages: list[dict[str, Any]]) -> list[int]:
        tokenizer = self.models[model].tokenizer
        chat = [{"role": m["role"], "content": _text(m.get("content"))} for m in messages]
        return list(
            tokenizer.apply_chat_template(
                chat, add_generation_prompt=True, tokenize=True, return_dict=False
            )
        )

    def _request(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> GenerationRequest:
        served = self.models[model]
        asked = params.get("max_completion_tokens") or params.get("max_tokens")
        limit = asked or DEFAULT_MAX_TOKENS
        forcing = params.get(FORCING_PARAM)
        force: dict[str, Any] = {}
        if forcing is not None:
            cue = served.tokenizer.encode(forcing.cue, add_special_tokens=False)
            whole = forcing.budget + len(cue) + forcing.answer_tokens
            limit = min(int(asked), whole) if asked else whole
            force = {
                "force_at": forcing.budget,
                "force_ids": list(cue),
                "force_answer_tokens": forcing.answer_tokens,
                "answered": forcing.answered,
            }
        return GenerationRequest(
            prompt_ids=self.prompt_ids(model, messages),
            max_new_tokens=int(limit),
            temperature=float(params.get("temperature") or 0.0),
            top_p=float(params.get("top_p") or 1.0),
            frequency_penalty=float(params.get("frequency_penalty") or 0.0),
            presence_penalty=float(params.get("presence_penalty") or 0.0),
            stop=list(params.get("stop") or []),
            adapter=served.adapter,
            seed=params.get("seed"),
            **force,
        )

    def _submit(self, model: str, request: GenerationRequest) -> None:
        try:
            self.models[model].engine.submit(request)
        except ValueError as exc:
            raise BackendError(
                400, str(exc), "invalid_request_error", "context_length_exceeded"
            ) from None

    async def complete(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> Completion:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[GenerationRequest] = loop.create_future()
        request = self._request(model, messages, params)
        request.on_done = lambda r: loop.call_soon_threadsafe(_resolve, done, r)
        self._submit(model, request)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            request.cancelled.set()
            raise
        if request.error is not None:
            raise BackendError(500, f"local generation failed: {request.error}", "server_error")
        return Completion(
            text=request.text,
            finish_reason=request.finish_reason or "stop",
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(request.output_ids),
            model=model,
            extra={"forced_at": request.forced_at},
            stop_sequence=request.stop_sequence,
        )

    async def stream(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | GenerationRequest] = asyncio.Queue()
        request = self._request(model, messages, params)
        request.on_delta = lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
        request.on_done = lambda r: loop.call_soon_threadsafe(queue.put_nowait, r)
        self._submit(model, request)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    yield Delta(text=item)
                    continue
                if item.error is not None:
                    raise BackendError(
                        500, f"local generation failed: {item.error}", "server_error"
                    )
                yield Delta(
                    finish_reason=item.finish_reason or "stop",
                    prompt_tokens=len(item.prompt_ids),
                    completion_tokens=len(item.output_ids),
                    forced_at=item.forced_at,
                    stop_sequence=item.stop_sequence,
                )
                return
        finally:
            request.cancelled.set()  # a no-op once finished; stops the row if the client left


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)
