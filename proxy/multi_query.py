"""Query-OPT in the gateway: ``POST /v1/multi_query`` and transparent query batching.

Both put a shared context once and several queries after it into one upstream call
(:mod:`tokenskip.multi_query` builds and parses it). Whatever the merged answer does not give
back cleanly is answered by a call of its own, so every query gets exactly one answer, its
own. The merged call's ledger row carries the input tokens it saved (kind ``query_batching``)
against one call per query.

Transparent batching (a model's ``tokenskip: {batch: {...}}``): chat requests that arrive
within ``window_ms`` of each other and differ only in their last user message (same model,
same earlier messages, same sampling parameters) are merged, up to ``max_queries``; each
caller gets its answer as a normal chat completion (or stream). A request that cannot be
merged, or whose answer does not come back, takes the normal path unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from proxy.errors import ProxyError
from proxy.policy import BatchSettings
from proxy.protocol import ChatCompletionRequest, ChatMessage, completion_id, now, short
from tokenskip.errors import InvalidInputError
from tokenskip.multi_query import (
    Query,
    build_messages,
    make_queries,
    parse_answers,
    repeating,
    single_messages,
)

if TYPE_CHECKING:
    from proxy.config import ModelEntry
    from proxy.service import ChatService

log = logging.getLogger(__name__)

RETRY_CONCURRENCY = 8
"""Queries asked alone after a merged call at most at once (per /v1/multi_query request)."""


class QueryItem(BaseModel):
    """A query with the caller's own id, echoed back as given (a number or a string)."""

    model_config = ConfigDict(extra="forbid")

    id: int | str = Field(description="the caller's id: a non-negative integer or a string")
    query: str = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("an integer id must be >= 0")
        if isinstance(v, str) and not 0 < len(v) <= 200:
            raise ValueError("a string id must have 1 to 200 characters")
        return v


class MultiQueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1)
    context: str | list[ChatMessage] = Field(
        description="a text, or the messages every query shares (system prompt, document, shots)"
    )
    queries: list[str | QueryItem] = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, gt=0, description="per answer")
    temperature: float | None = Field(None, ge=0, le=2)
    frequency_penalty: float | None = Field(
        None, ge=-2, le=2, description="over the whole merged reply; per answer when retried alone"
    )
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    stop_loops: bool | None = Field(
        None, description="stop the merged reply once an answer loops (None: the model's setting)"
    )


@dataclass
class Merged:
    """A merged call's outcome."""

    answers: dict[int, str]
    missing: list[int]
    problems: list[str]
    prompt_tokens: int
    """As the upstream reported it (billed)."""
    completion_tokens: int
    counted_prompt_tokens: int
    """The merged prompt counted by the gateway, in the same units as the single calls."""
    single_prompt_tokens: dict[int, int]
    """By query id: what that query asked on its own would send, counted the same way."""

    @property
    def separate_prompt_tokens(self) -> int:
        return sum(self.single_prompt_tokens.values())


def _content(m: dict[str, Any]) -> str:
    c = m.get("content")
    if isinstance(c, list):
        return "".join(p.get("text", "") for p in c if isinstance(p, dict))
    return c or ""


class MultiQuery:
    """Merged calls over the chat service (its routing, fallbacks and accounting)."""

    def __init__(self, service: ChatService):
        self.service = service

    # -- counting and limits --------------------------------------------------------------
    def count(self, entry: ModelEntry, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens of ``messages`` in the model's chat template where it is known."""
        tok = self.service.counter(entry).tokenizer
        hf = getattr(tok, "hf", None)
        if hf is not None and getattr(hf, "chat_template", None):
            chat = [{"role": m["role"], "content": _content(m)} for m in messages]
            return len(
                hf.apply_chat_template(
                    chat, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            )
        return sum(tok.count(_content(m)) + 4 for m in messages)

    def window(self, entry: ModelEntry, settings: BatchSettings | None) -> int | None:
        if settings is not None and settings.max_context_tokens:
            return settings.max_context_tokens
        if entry.is_local:
            return self.service.local.models[entry.name].engine.runner.max_positions
        limit = (entry.model_info or {}).get("max_input_tokens")
        return int(limit) if limit else None

    @staticmethod
    def single(context: str | list[dict[str, Any]], query: Query) -> list[dict[str, Any]]:
        return single_messages(context, query.text)

    # -- calls ----------------------------------------------------------------------------
    async def merged(
        self,
        entry: ModelEntry,
        context: str | list[dict[str, Any]],
        queries: list[Query],
        *,
        answer_tokens: int,
        params: dict[str, Any],
        settings: BatchSettings | None = None,
        stop_loops: bool | None = None,
        only_if_cheaper: bool = False,
    ) -> Merged | None:
        """One call for all ``queries``; None when the merged prompt would not fit (or, with
        ``only_if_cheaper``, would send as many prompt tokens as one call per query).
        ``stop_loops`` (None: the model's ``batch.stop_loops``, on by default) streams the call
        and stops it once the answer being written loops."""
        if stop_loops is None:
            stop_loops = (settings or BatchSettings()).stop_loops
        messages = build_messages(context, queries)

        def counts() -> tuple[int, dict[int, int]]:  # tokenizing long contexts: off the loop
            merged = self.count(entry, messages)
            return merged, {q.id: self.count(entry, self.single(context, q)) for q in queries}

        prompt_tokens, singles = await asyncio.to_thread(counts)
        separate = sum(singles.values())
        max_tokens = answer_tokens * len(queries) + 16 * len(queries) + 32  # JSON framing
        limit = self.window(entry, settings)
        if limit is not None and prompt_tokens + max_tokens > limit:
            log.info(
                "not merging %d queries: %d + %d tokens > %d",
                len(queries),
                prompt_tokens,
                max_tokens,
                limit,
            )
            return None
        if only_if_cheaper and prompt_tokens >= separate:
            log.info(
                "not merging %d queries: the merged prompt (%d tokens) costs no less than "
                "one call per query (%d)",
                len(queries),
                prompt_tokens,
                separate,
            )
            return None
        request = ChatCompletionRequest.model_validate(
            {
                "model": entry.name,
                "messages": messages,
                "max_tokens": max_tokens,
                "tokenskip": {"enabled": False},
                **params,
            }
        )
        prepared = await self.service.prepare(request)
        prepared.batch_tokens_saved = max(0, separate - prompt_tokens)
        if stop_loops:
            result = await self.service.complete_watched(
                prepared, repeating, prompt_tokens=prompt_tokens
            )
        else:
            result = await self.service.complete(prepared)
        choice = result["choices"][0]
        text = choice["message"]["content"] or ""
        parsed = parse_answers(text, [q.id for q in queries])
        problems = list(parsed.problems)
        if choice["finish_reason"] == "stopped":
            problems.insert(0, f"stopped after {len(text)} characters: the answer was looping")
        if parsed.missing:
            log.info("merged answer lacks ids %s: %s", parsed.missing, problems[:3])
        usage = result["usage"]
        return Merged(
            parsed.answers,
            parsed.missing,
            problems,
            usage["prompt_tokens"],
            usage["completion_tokens"],
            prompt_tokens,
            singles,
        )

    async def one(
        self, entry: ModelEntry, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> dict[str, Any]:
        request = ChatCompletionRequest.model_validate(
            {"model": entry.name, "messages": messages, "tokenskip": {"enabled": False}, **params}
        )
        return await self.service.complete(await self.service.prepare(request))

    # -- POST /v1/multi_query -------------------------------------------------------------
    async def run(self, body: MultiQueryRequest) -> dict[str, Any]:
        entry = self.service.config.models.get(body.model)
        if entry is None:
            raise ProxyError(
                404,
                f"The model '{short(body.model)}' does not exist on this gateway",
                code="model_not_found",
                param="model",
            )
        # the prompt numbers the queries 1..N; the caller's own ids are echoed back
        given = [q.id if isinstance(q, QueryItem) else i for i, q in enumerate(body.queries, 1)]
        dupes = sorted({str(g) for g in given if given.count(g) > 1})
        if dupes:
            raise ProxyError(400, f"duplicate query ids: {dupes}", param="queries")
        try:
            queries = make_queries(
                [q.query if isinstance(q, QueryItem) else q for q in body.queries]
            )
        except InvalidInputError as exc:
            raise ProxyError(400, str(exc), param="queries") from None
        client_id = {q.id: g for q, g in zip(queries, given)}
        context: str | list[dict[str, Any]]
        if isinstance(body.context, str):
            if not body.context.strip():
                raise ProxyError(400, "context must be a non-empty string", param="context")
            context = body.context
        else:
            context = [m.model_dump(exclude_none=True) for m in body.context]
        answer_tokens = body.max_tokens or 256
        params = body.model_dump(
            include={"temperature", "frequency_penalty", "presence_penalty"}, exclude_none=True
        )
        started = time.perf_counter()
        merged = None
        if len(queries) > 1:
            try:
                merged = await self.merged(
                    entry,
                    context,
                    queries,
                    answer_tokens=answer_tokens,
                    params=params,
                    settings=entry.batch,
                    stop_loops=body.stop_loops,
                )
            except ProxyError as exc:  # e.g. the stream broke mid-reply: every query alone
                log.warning("merged call for %d queries failed: %s", len(queries), exc)
        answers: list[dict[str, Any]] = []
        prompt_tokens = merged.prompt_tokens if merged else 0
        completion_tokens = merged.completion_tokens if merged else 0
        counted = merged.counted_prompt_tokens if merged else 0
        separate = merged.separate_prompt_tokens if merged else 0
        calls = 1 if merged else 0
        alone = [q for q in queries if merged is None or q.id not in merged.answers]
        limit = asyncio.Semaphore(RETRY_CONCURRENCY)

        async def ask_alone(q: Query) -> dict[str, Any]:
            async with limit:
                single = self.single(context, q)
                return await self.one(entry, single, {**params, "max_tokens": answer_tokens})

        # the queries the merged call did not answer: one call each, several at a time
        tasks = [asyncio.ensure_future(ask_alone(q)) for q in alone]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:  # one failed (or the client left): stop the others' calls too
            for t in tasks:
                t.cancel()
            raise
        by_id = dict(zip((q.id for q in alone), results, strict=True))
        for q in queries:
            if merged is not None and q.id not in by_id:
                answers.append(
                    {
                        "id": client_id[q.id],
                        "query": q.text,
                        "answer": merged.answers[q.id],
                        "source": "merged",
                    }
                )
                continue
            result = by_id[q.id]
            if merged is not None:
                counted += merged.single_prompt_tokens[q.id]
            else:
                tokens = self.count(entry, self.single(context, q))
                counted += tokens
                separate += tokens
            calls += 1
            prompt_tokens += result["usage"]["prompt_tokens"]
            completion_tokens += result["usage"]["completion_tokens"]
            answers.append(
                {
                    "id": client_id[q.id],
                    "query": q.text,
                    "answer": result["choices"][0]["message"]["content"],
                    "source": "single" if merged is None else "retried",
                }
            )
        return {
            "id": completion_id().replace("chatcmpl", "mq"),
            "object": "multi_query",
            "created": now(),
            "model": entry.name,
            "answers": answers,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "calls": calls,
                "queries": len(queries),
            },
            "savings": {
                "separate_calls": len(queries),
                "separate_prompt_tokens": separate,
                "sent_prompt_tokens": counted,
                "prompt_tokens_saved": separate - counted,
                **(
                    {
                        "note": "the merged call sent more prompt tokens than one call per "
                        "query would have: the context is too short for its merge instructions "
                        "to pay off (transparent batching does not merge such requests)"
                    }
                    if separate - counted < 0
                    else {}
                ),
                "calls_saved": len(queries) - calls,
                "separate_counted": "prompt tokens of one call per query, counted with the "
                "model's tokenizer and chat template (estimated when the tokenizer is not the model's own)",
            },
            "format": {
                "merged": merged is not None,
                "complete": bool(merged and not merged.missing),
                "missing_ids": [client_id[i] for i in merged.missing] if merged else [],
                "problems": merged.problems[:10] if merged else [],
            },
            "latency_s": round(time.perf_counter() - started, 4),
        }


# ---------------------------------------------------------------------------- batching


@dataclass
class BatchedAnswer:
    text: str
    batch_size: int
    prompt_tokens: int
    """This request's share of the merged prompt."""
    prompt_tokens_single: int
    """What the request would have sent on its own."""
    completion_tokens: int


@dataclass
class _Group:
    entry: ModelEntry
    settings: BatchSettings
    prefix: list[dict[str, Any]]
    params: dict[str, Any]
    members: list[tuple[ChatCompletionRequest, asyncio.Future]]
    timer: asyncio.TimerHandle | None = None


class Batcher:
    """Merges concurrent chat requests that share everything but their last user message."""

    def __init__(self, mq: MultiQuery):
        self.mq = mq
        self._groups: dict[str, _Group] = {}

    def settings(self, model: str) -> BatchSettings | None:
        entry = self.mq.service.config.models.get(model)
        return entry.batch if entry is not None else None

    def _key(self, body: ChatCompletionRequest) -> tuple[str, list[dict], dict] | None:
        """The group a request may join, or None if it must go alone."""
        opts = body.tokenskip
        if opts is not None and (
            opts.batch is False
            or opts.enabled is False
            or opts.prompt_ratio is not None
            or opts.cot_ratio is not None
        ):
            return None
        if body.model_extra or (body.n or 1) != 1 or len(body.messages) < 2:
            return None  # tools, response_format, ...: not ours to merge
        if body.frequency_penalty or body.presence_penalty:
            return None  # in a merged reply they would count the other callers' answers too
        last = body.messages[-1]
        if last.role != "user" or not isinstance(last.content, str) or not last.content.strip():
            return None
        prefix = [m.model_dump(exclude_none=True) for m in body.messages[:-1]]
        params = body.model_dump(
            exclude_none=True,
            exclude={
                "model",
                "messages",
                "tokenskip",
                "stream",
                "stream_options",
                "max_tokens",
                "max_completion_tokens",
                "user",
            },
        )
        key = json.dumps([body.model, prefix, params], sort_keys=True, ensure_ascii=False)
        return key, prefix, params

    async def submit(self, body: ChatCompletionRequest) -> BatchedAnswer | None:
        """This request's answer from a merged call, or None: then serve it normally."""
        settings = self.settings(body.model)
        found = self._key(body) if settings is not None else None
        if settings is None or found is None:
            return None
        key, prefix, params = found
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        group = self._groups.get(key)
        if group is None:
            entry = self.mq.service.config.models[body.model]
            group = _Group(entry, settings, prefix, params, [])
            self._groups[key] = group
            group.timer = loop.call_later(settings.window_ms / 1000, self._send, key)
        group.members.append((body, future))
        if len(group.members) >= settings.max_queries:
            self._send(key)
        return await future

    def _send(self, key: str) -> None:
        group = self._groups.pop(key, None)
        if group is None:
            return
        if group.timer is not None:
            group.timer.cancel()
        asyncio.ensure_future(self._flush(group))

    async def _flush(self, group: _Group) -> None:
        live = [(b, f) for b, f in group.members if not f.done()]
        try:
            results = await self._answer(group, [b for b, _ in live]) if len(live) > 1 else None
        except Exception as exc:  # the merged call failed: everyone goes alone
            log.warning("merged call for %d queries failed: %s", len(live), exc)
            results = None
        for i, (_, future) in enumerate(live):
            if not future.done():
                future.set_result(results[i] if results else None)

    async def _answer(
        self, group: _Group, bodies: list[ChatCompletionRequest]
    ) -> list[BatchedAnswer | None] | None:
        entry, settings = group.entry, group.settings
        if self.mq.count(entry, group.prefix) < settings.min_prefix_tokens:
            return None
        queries = make_queries([b.messages[-1].content for b in bodies])
        answer_tokens = max(b.token_limit or settings.answer_tokens for b in bodies)
        merged = await self.mq.merged(
            entry,
            group.prefix,
            queries,
            answer_tokens=answer_tokens,
            params=group.params,
            settings=settings,
            only_if_cheaper=True,
        )
        if merged is None:
            return None
        counter = self.mq.service.counter(entry).tokenizer
        share = round(merged.counted_prompt_tokens / len(bodies))
        out: list[BatchedAnswer | None] = []
        for q in queries:
            text = merged.answers.get(q.id)
            out.append(
                None
                if text is None
                else BatchedAnswer(
                    text,
                    len(bodies),
                    share,
                    merged.single_prompt_tokens[q.id],
                    counter.count(text),
                )
            )
        return out


def batched_completion(body: ChatCompletionRequest, answer: BatchedAnswer) -> dict[str, Any]:
    """A chat.completion for a request answered from a merged call."""
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": now(),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(answer),
        "tokenskip": {"batched": True, "batch_size": answer.batch_size, "cot_method": "none"},
    }


def _usage(answer: BatchedAnswer) -> dict[str, Any]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
        "prompt_tokens_original": answer.prompt_tokens_single,
        "prompt_tokens_saved": max(0, answer.prompt_tokens_single - answer.prompt_tokens),
        "tokens_estimated": True,
    }


async def batched_stream(body: ChatCompletionRequest, answer: BatchedAnswer):
    """The same answer as SSE: role chunk, the content, finish, optional usage, [DONE]."""
    cid, created = completion_id(), now()

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        data = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
            if delta is not None
            else [],
            **extra,
        }
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    yield chunk({"content": answer.text})
    yield chunk({}, "stop")
    if body.stream_options and body.stream_options.include_usage:
        yield chunk(
            None, usage=_usage(answer), tokenskip={"batched": True, "batch_size": answer.batch_size}
        )
    yield "data: [DONE]\n\n"
