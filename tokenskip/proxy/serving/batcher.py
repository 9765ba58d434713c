"""Transparent query batching: concurrent chat requests answered from one merged call.

A model's ``tokenskip: {batch: {...}}`` turns it on: chat requests that arrive within
``window_ms`` of each other and differ only in their last user message (same model, same
earlier messages, same sampling parameters) are merged, up to ``max_queries``, through
:class:`tokenskip.proxy.serving.multi_query.MultiQuery`; each caller gets its answer as a normal chat
completion (or stream). A request that cannot be merged, or whose answer does not come back,
takes the normal path unchanged.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tokenskip.multi_query import make_queries
from tokenskip.proxy.infra.policy import BatchSettings
from tokenskip.proxy.protocol import (
    DONE,
    ChatCompletionRequest,
    chunk_body,
    completion_body,
    completion_id,
    now,
    sse,
    usage_body,
)
from tokenskip.proxy.serving.multi_query import MultiQuery

if TYPE_CHECKING:
    from tokenskip.proxy.infra.config import ModelEntry

log = logging.getLogger(__name__)


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
    info = {"batched": True, "batch_size": answer.batch_size, "cot_method": "none"}
    return completion_body(
        completion_id(), now(), body.model, answer.text, "stop", _usage(answer), info
    )


def _usage(answer: BatchedAnswer) -> dict[str, Any]:
    return usage_body(
        answer.prompt_tokens,
        answer.completion_tokens,
        saved=max(0, answer.prompt_tokens_single - answer.prompt_tokens),
        estimated=True,
        original=answer.prompt_tokens_single,
    )


async def batched_stream(body: ChatCompletionRequest, answer: BatchedAnswer) -> AsyncIterator[str]:
    """The same answer as SSE: role chunk, the content, finish, optional usage, [DONE]."""
    cid, created = completion_id(), now()
    yield sse(chunk_body(cid, created, body.model, {"role": "assistant", "content": ""}))
    yield sse(chunk_body(cid, created, body.model, {"content": answer.text}))
    yield sse(chunk_body(cid, created, body.model, {}, "stop"))
    if body.stream_options and body.stream_options.include_usage:
        info = {"batched": True, "batch_size": answer.batch_size}
        yield sse(chunk_body(cid, created, body.model, None, usage=_usage(answer), tokenskip=info))
    yield DONE
