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
from tokenskip.runtime.tool_calls import (
    CallBuffer,
    Parsed,
    ToolFormat,
    function_names,
    parse,
    template_messages,
    tool_format,
)

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

    @property
    def tool_format(self) -> ToolFormat | None:
        """How this model writes tool calls (its chat template's markup); None: no tools."""
        return tool_format(self.tokenizer)


@dataclass(frozen=True)
class _Tools:
    """A request's tools as the local model takes them: the template's markup, the offered
    names, and what the answer is made to begin with (``tool_choice``)."""

    fmt: ToolFormat
    names: set[str]
    prefix: str

    @classmethod
    def of(cls, served: LocalModel, params: dict[str, Any]) -> _Tools | None:
        fmt = served.tool_format
        choice = params.get("tool_choice")
        if fmt is None or not params.get("tools") or choice == "none":
            return None
        return cls(fmt, function_names(params["tools"]), fmt.forced_prefix(choice))

    def calls(self, text: str) -> Parsed | None:
        return parse(self.prefix + text, self.fmt, self.names)


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
        prefill_chunk: int | None = None,
    ) -> Engine:
        engine = Engine(
            Runner(model, tokenizer, adapters),
            max_batch=max_batch,
            speculative=speculative,
            early_exit=early_exit,
            prefill_chunk=prefill_chunk,
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

    def supports_tools(self, model: str) -> bool:
        """Whether the served model's chat template defines tool calls this runtime parses."""
        return self.models[model].tool_format is not None

    def prompt_ids(
        self,
        model: str,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        prefix: str = "",
    ) -> list[int]:
        """The chat template over ``messages`` (and ``tools`` if given), ready for the
        assistant's answer, which is made to begin with ``prefix`` (a forced tool call)."""
        tokenizer = self.models[model].tokenizer
        ids = list(
            tokenizer.apply_chat_template(
                template_messages(messages),
                tools=tools or None,
                add_generation_prompt=True,
                tokenize=True,
                return_dict=False,
            )
        )
        if prefix:
            ids += tokenizer.encode(prefix, add_special_tokens=False)
        return ids

    def _request(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> tuple[GenerationRequest, _Tools | None]:
        served = self.models[model]
        tools = _Tools.of(served, params)
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
        stop = list(params.get("stop") or [])
        if tools is not None and params.get("parallel_tool_calls") is False:
            stop.append(tools.fmt.close)  # one call, then the answer ends
        request = GenerationRequest(
            prompt_ids=self.prompt_ids(
                model,
                messages,
                params.get("tools") if tools is not None else None,
                tools.prefix if tools is not None else "",
            ),
            max_new_tokens=int(limit),
            temperature=float(params.get("temperature") or 0.0),
            top_p=float(params.get("top_p") or 1.0),
            frequency_penalty=float(params.get("frequency_penalty") or 0.0),
            presence_penalty=float(params.get("presence_penalty") or 0.0),
            stop=stop,
            adapter=served.adapter,
            seed=params.get("seed"),
            **force,
        )
        return request, tools

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
        request, tools = self._request(model, messages, params)
        request.on_done = lambda r: loop.call_soon_threadsafe(_resolve, done, r)
        self._submit(model, request)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            request.cancelled.set()
            raise
        if request.error is not None:
            raise BackendError(500, f"local generation failed: {request.error}", "server_error")
        parsed = tools.calls(request.text) if tools is not None else None
        stop_sequence = _user_stop(request, tools)
        prefix = tools.prefix if tools is not None else ""
        return Completion(
            text=prefix + request.text if parsed is None else parsed.content or "",
            finish_reason=_finish(request, parsed),
            prompt_tokens=len(request.prompt_ids),
            completion_tokens=len(request.output_ids),
            model=model,
            extra={"forced_at": request.forced_at},
            stop_sequence=stop_sequence if parsed is None else None,
            tool_calls=parsed.tool_calls if parsed is not None else None,
        )

    async def stream(
        self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> AsyncIterator[Delta]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | GenerationRequest] = asyncio.Queue()
        request, tools = self._request(model, messages, params)
        buffer = CallBuffer(tools.fmt, tools.prefix) if tools is not None else None
        request.on_delta = lambda text: loop.call_soon_threadsafe(queue.put_nowait, text)
        request.on_done = lambda r: loop.call_soon_threadsafe(queue.put_nowait, r)
        self._submit(model, request)
        try:
            while True:
                item = await queue.get()
                if isinstance(item, str):
                    text = buffer.feed(item) if buffer is not None else item
                    if text:
                        yield Delta(text=text)
                    continue
                if item.error is not None:
                    raise BackendError(
                        500, f"local generation failed: {item.error}", "server_error"
                    )
                parsed = None
                if buffer is not None and tools is not None:
                    held, parsed = buffer.finish(tools.names)
                    if parsed is None and held:
                        yield Delta(text=held)
                    elif parsed is not None:
                        if parsed.content:
                            yield Delta(text=parsed.content)
                        yield Delta(
                            tool_calls=[{"index": i, **c} for i, c in enumerate(parsed.tool_calls)]
                        )
                stop_sequence = _user_stop(item, tools)
                yield Delta(
                    finish_reason=_finish(item, parsed),
                    prompt_tokens=len(item.prompt_ids),
                    completion_tokens=len(item.output_ids),
                    forced_at=item.forced_at,
                    stop_sequence=stop_sequence if parsed is None else None,
                )
                return
        finally:
            request.cancelled.set()  # a no-op once finished; stops the row if the client left


def _finish(request: GenerationRequest, parsed: Parsed | None) -> str:
    if parsed is not None:
        return "tool_calls"
    return request.finish_reason or "stop"


def _user_stop(request: GenerationRequest, tools: _Tools | None) -> str | None:
    """The client's stop string that ended the text; the close tag this backend added to
    end a single tool call is not one."""
    if tools is not None and request.stop_sequence == tools.fmt.close:
        return None
    return request.stop_sequence


def _resolve(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)
