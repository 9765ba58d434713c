"""Query-OPT in the gateway: ``POST /v1/multi_query`` and transparent query batching.

Both put a shared context once and several queries after it into one upstream call
(:mod:`tokenskip.multi_query` builds and parses it). Whatever the merged answer does not give
back cleanly is answered by a call of its own, so every query gets exactly one answer, its
own. The merged call's ledger row carries the input tokens it saved (kind ``query_batching``)
against one call per query.

Transparent batching of ordinary chat requests over these merged calls is in
:mod:`tokenskip.proxy.serving.batcher`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenskip.errors import InvalidInputError
from tokenskip.multi_query import (
    Query,
    build_messages,
    make_queries,
    parse_answers,
    repeating,
    single_messages,
)
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.infra.policy import BatchSettings
from tokenskip.proxy.protocol import (
    ChatCompletionRequest,
    MultiQueryRequest,
    QueryItem,
    completion_id,
    now,
)
from tokenskip.tokens import chat_prompt_tokens

if TYPE_CHECKING:
    from tokenskip.proxy.infra.config import ModelEntry
    from tokenskip.proxy.serving.service import ChatService

log = logging.getLogger(__name__)

RETRY_CONCURRENCY = 8
"""Queries asked alone after a merged call at most at once (per /v1/multi_query request)."""


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


class MultiQuery:
    """Merged calls over the chat service (its routing, fallbacks and accounting)."""

    def __init__(self, service: ChatService):
        self.service = service

    # -- counting and limits --------------------------------------------------------------
    def count(self, entry: ModelEntry, messages: list[dict[str, Any]]) -> int:
        """Prompt tokens of ``messages`` in the model's chat template where it is known."""
        return chat_prompt_tokens(self.service.counter(entry).tokenizer, messages)

    def window(self, entry: ModelEntry, settings: BatchSettings | None) -> int | None:
        if settings is not None and settings.max_context_tokens:
            return settings.max_context_tokens
        return self.service.models.context_window(entry)

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
        x = await self.service.open(request, batch_tokens_saved=max(0, separate - prompt_tokens))
        if stop_loops:
            result = await self.service.complete_watched(x, repeating, prompt_tokens=prompt_tokens)
        else:
            result = await self.service.complete(x)
        choice = result["choices"][0]
        text = choice["message"]["content"] or ""
        parsed = parse_answers(text, [q.id for q in queries], [q.text for q in queries])
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
        return await self.service.complete(await self.service.open(request))

    # -- POST /v1/multi_query -------------------------------------------------------------
    async def run(self, body: MultiQueryRequest) -> dict[str, Any]:
        entry = self.service.models.entry(body.model)
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
