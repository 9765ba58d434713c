"""tokenskip inside the official SDK clients: the gateway's message policy, in-process.

    import openai, tokenskip

    client = tokenskip.wrap(openai.OpenAI(), policy={"prompt_ratio": 0.5})
    r = client.chat.completions.create(model="gpt-4o-mini", messages=[...])
    r.tokenskip  # {"prompt_tokens_saved": 412, "parts": [...], ...}

``wrap`` returns the client with ``chat.completions`` and ``responses`` (``openai.OpenAI`` /
``AsyncOpenAI``) or ``messages`` (``anthropic.Anthropic`` / ``AsyncAnthropic``) compressing
the request's texts before the SDK sends it, in ``create`` and in the SDK's ``stream`` and
``parse`` helpers; everything else is the client itself. The texts go through the very code the gateway runs
(:func:`~tokenskip.proxy.serving.prompt.compress_messages` over the chat messages, or over a
Responses or Messages body's texts seen as chat messages, :mod:`~tokenskip.proxy.serving.native`):
instructions untouched, context compressed with the guards, tool outputs lossless, a text
compressed the same way on every turn so provider prompt caches keep their prefix. The
answer is the SDK's own object (a stream included), with what was saved on its
``tokenskip`` attribute. A request's ``extra_body={"tokenskip": {...}}`` overrides the policy
for that call; an invalid one raises the SDK's own ``BadRequestError`` before anything is
sent.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import threading
from dataclasses import dataclass, field
from typing import Any

from tokenskip.models import DEFAULT_MODEL, load_tokenizer
from tokenskip.proxy.infra.policy import CompressionPolicy
from tokenskip.proxy.protocol import ChatMessage
from tokenskip.proxy.serving.native import VIEWS, put_text
from tokenskip.proxy.serving.prepare import prompt_settings
from tokenskip.proxy.serving.prompt import CompressionMemo, PromptCompression, compress_messages
from tokenskip.proxy.serving.registry import build_scorer
from tokenskip.tokens import TextTokenizer

APIS = {
    "chat": ("chat", "completions"),
    "responses": ("responses",),
    "messages": ("messages",),
}
"""Each API a wrapped client compresses, and where its ``create`` lives on the client."""
METHODS = ("create", "stream", "parse")
"""The methods of each API that send a request: the SDK helpers (``stream``, ``parse``) take
the same arguments as ``create``, so they are compressed the same way."""
_TEXT_FIELDS = {"responses": ("instructions", "input"), "messages": ("system", "messages")}


@dataclass
class Compressor:
    """A policy with the tokenizer that counts for it, its scorers and its memo."""

    policy: CompressionPolicy
    tokenizer_name: str | None = None
    """The target model's tokenizer (a model name or path); None counts with the embedded
    model's and marks the counts estimated."""
    _tokenizer: TextTokenizer | None = field(default=None, init=False, repr=False)
    _scorers: dict[tuple[str, str], Any] = field(default_factory=dict, init=False, repr=False)
    _memo: CompressionMemo = field(default_factory=CompressionMemo, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def tokenizer(self) -> TextTokenizer:
        with self._lock:
            if self._tokenizer is None:
                name = self.tokenizer_name or DEFAULT_MODEL
                self._tokenizer = TextTokenizer(load_tokenizer(name), name=name)
            return self._tokenizer

    def policy_for(self, overrides: dict[str, Any] | None) -> CompressionPolicy:
        """The policy with a request's overrides; ValueError naming what is wrong."""
        if overrides is None:
            return self.policy
        if not isinstance(overrides, dict):
            raise ValueError("tokenskip must be an object of policy overrides")
        return CompressionPolicy.from_mapping(
            {k: v for k, v in overrides.items() if v is not None}, self.policy
        )

    def scorer(self, policy: CompressionPolicy) -> Any:
        key = (policy.scorer, policy.scorer_model or "")
        with self._lock:
            found = self._scorers.get(key)
        if found is not None:
            return found
        found = build_scorer(policy.scorer, self.tokenizer, policy.scorer_model)
        with self._lock:
            return self._scorers.setdefault(key, found)

    def messages(
        self, messages: list[dict[str, Any]], policy: CompressionPolicy
    ) -> PromptCompression | None:
        """Chat messages compressed as the gateway compresses them (None: nothing to do)."""
        if not policy.compresses_prompt:
            return None
        return compress_messages(
            messages,
            prompt_settings(policy),
            tokenizer=self.tokenizer,
            scorer=self.scorer(policy) if policy.drops_words else None,
            memo=self._memo,
        )

    def request(self, api: str, kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A ``create`` call's keyword arguments with their texts compressed, and what was
        saved. ValueError for an invalid ``tokenskip`` override."""
        kwargs = dict(kwargs)
        extra = kwargs.get("extra_body")
        overrides = None
        if isinstance(extra, dict) and "tokenskip" in extra:
            extra = dict(extra)
            overrides = extra.pop("tokenskip")
            if extra:
                kwargs["extra_body"] = extra
            else:
                kwargs.pop("extra_body")
        policy = self.policy_for(overrides)
        if api == "chat":
            if not policy.enabled or not isinstance(kwargs.get("messages"), list):
                return kwargs, _info(None, policy, self)  # the SDK reports what is missing
            # the messages as the gateway sends them upstream (role first, no null fields)
            messages = [ChatMessage.model_validate(_plain(m)).as_dict() for m in kwargs["messages"]]
            done = self.messages(messages, policy)
            kwargs["messages"] = done.messages if done is not None else messages
            return kwargs, _info(done, policy, self)
        body = {k: kwargs[k] for k in _TEXT_FIELDS[api] if k in kwargs}
        view = VIEWS[api](body)
        done = self.messages(view.messages, policy)
        if done is not None and done.parts:
            body = copy.deepcopy(body)
            for part in done.parts:
                put_text(body, view.paths[(part.message, part.part)], part.after)
            kwargs.update(body)
        return kwargs, _info(done, policy, self)


def _plain(message: Any) -> Any:
    """A message as a dict (the SDK's own message objects, passed back, included)."""
    dump = getattr(message, "model_dump", None)
    return dump(exclude_none=True) if dump is not None else message


def _info(
    done: PromptCompression | None, policy: CompressionPolicy, compressor: Compressor
) -> dict[str, Any]:
    parts = done.parts if done is not None else []
    return {
        "enabled": policy.compresses_prompt,
        "prompt_tokens_saved": done.saved_tokens if done is not None else 0,
        "tokens_estimated": compressor.tokenizer_name is None,
        "tokenizer": compressor.tokenizer_name or DEFAULT_MODEL,
        "parts": [p.to_dict() for p in parts],
    }


class _Proxy:
    """An object standing in for ``target``: the names in ``replace`` are ours, every other
    attribute is the target's."""

    def __init__(self, target: Any, replace: dict[str, Any]):
        self._target = target
        self._replace = replace

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("_replace", {}):
            return self._replace[name]
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return f"tokenskip.wrap({self._target!r})"


def _bad_request(sdk: Any, client: Any, message: str) -> Exception:
    """The SDK's own 400 error, raised before anything is sent."""
    import httpx

    body = {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": "tokenskip",
            "code": "invalid_value",
        }
    }
    if sdk.__name__ == "anthropic":
        body = {"type": "error", "error": {"type": "invalid_request_error", "message": message}}
    request = httpx.Request("POST", str(getattr(client, "base_url", "http://localhost")))
    response = httpx.Response(400, request=request, json=body)
    return sdk.BadRequestError(message, response=response, body=body)


def _attach(result: Any, info: dict[str, Any]) -> Any:
    """``result`` with ``info`` as its ``tokenskip`` attribute (the SDKs' models and streams
    take one)."""
    result.tokenskip = info
    return result


def _create(
    sdk: Any, client: Any, compressor: Compressor, api: str, original: Any, is_async: bool
) -> Any:
    """``original`` (the SDK's ``create``, ``stream`` or ``parse``) with the request
    compressed first; ``is_async``: it returns an awaitable (an async client's ``create`` and
    ``parse``), so the compression runs in a worker thread, off the event loop."""

    def prepare(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        try:
            return compressor.request(api, kwargs)
        except ValueError as exc:
            raise _bad_request(sdk, client, f"tokenskip: {exc}") from None

    if is_async:

        @functools.wraps(original)
        async def acreate(*args: Any, **kwargs: Any) -> Any:
            kwargs, info = await asyncio.to_thread(prepare, kwargs)
            return _attach(await original(*args, **kwargs), info)

        return acreate

    @functools.wraps(original)
    def create(*args: Any, **kwargs: Any) -> Any:
        kwargs, info = prepare(kwargs)
        return _attach(original(*args, **kwargs), info)

    return create


def wrap(
    client: Any,
    *,
    policy: dict[str, Any] | CompressionPolicy | None = None,
    tokenizer: str | None = None,
) -> Any:
    """``client`` (an ``openai`` or ``anthropic`` client, sync or async) with its requests
    compressed by ``policy`` (a :class:`CompressionPolicy` or its keys as a dict; the
    gateway's defaults when None), counted in ``tokenizer``'s tokens (the target model's
    tokenizer, a model name or path; None: estimated with the embedded model's).

    Raises:
        TypeError: ``client`` is neither an openai nor an anthropic client.
        ValueError: an unknown policy key or an invalid value, named.
    """
    compressor = Compressor(
        policy
        if isinstance(policy, CompressionPolicy)
        else CompressionPolicy.from_mapping(policy or {}),
        tokenizer,
    )
    module = type(client).__module__.split(".")[0]
    if module == "openai":
        import openai as sdk

        apis = ("chat", "responses")
    elif module == "anthropic":
        import anthropic as sdk

        apis = ("messages",)
    else:
        raise TypeError(
            f"tokenskip.wrap takes an openai or anthropic client, got {type(client).__name__}"
        )
    replace: dict[str, Any] = {}
    for api in apis:
        first, *rest = APIS[api]
        resource = getattr(client, first)
        inner = resource
        for name in rest:
            inner = getattr(inner, name)
        asynchronous = type(client).__name__.startswith("Async")
        methods = {
            name: _create(
                sdk,
                client,
                compressor,
                api,
                getattr(inner, name),
                asynchronous and name != "stream",
            )
            for name in METHODS
            if callable(getattr(inner, name, None))
        }
        created = _Proxy(inner, methods)
        replace[first] = _Proxy(resource, {rest[0]: created}) if rest else created
    wrapped = _Proxy(client, replace)
    wrapped.__dict__["tokenskip"] = compressor
    return wrapped
