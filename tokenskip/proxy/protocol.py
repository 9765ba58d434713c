"""The wire protocol: request models of every endpoint, and the response bodies the gateway builds.

The models mirror OpenAI's chat-completions schema.

Unknown fields are kept (``extra="allow"``) and passed upstream untouched, so a client can use
any provider parameter the gateway does not know about. tokenskip's own options travel in the
``tokenskip`` extension object (the OpenAI SDK sends it with ``extra_body``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

from tokenskip.proxy import jsonio

MIN_RATIO = 0.01
"""The smallest keep ratio a request may ask for: below it a "ratio" is a typo, and its
reciprocal (the CoT saving estimate) overflows."""
MAX_NAME = 80
"""Client-supplied names (models) are echoed in messages cut to this many characters."""


def short(name: str) -> str:
    """A client-supplied name for an error message, never longer than ``MAX_NAME``."""
    return name if len(name) <= MAX_NAME else name[:MAX_NAME] + f"... ({len(name):,} characters)"


def _ratio(description: str) -> Any:
    """An optional keep ratio in [MIN_RATIO, 1]."""
    return Field(None, ge=MIN_RATIO, le=1, description=description)


class TokenskipOptions(BaseModel):
    """Per-request compression policy; any field left out falls back to the model's default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="false turns every tokenskip transform off")
    prompt_ratio: float | None = _ratio("keep ratio for the words of context (documents)")
    document_ratio: float | None = _ratio(
        "budget of a message of several documents ranked against its request"
    )
    instruction_ratio: float | None = _ratio("keep ratio for system/developer instructions")
    tool_ratio: float | None = _ratio("keep ratio for tool outputs beyond lossless transforms")
    lossless: bool | None = Field(None, description="false skips the lossless transforms")
    guards: bool | None = Field(None, description="false turns the meaning guards off")
    cache_safe: bool | None = Field(
        None, description="false lets compression change content before a cache_control mark"
    )
    cot_ratio: float | None = _ratio("keep ratio for the reasoning")
    cot_budget: StrictInt | None = Field(
        None, gt=0, le=10_000_000, description="reasoning budget in tokens (wins over cot_ratio)"
    )
    cot_method: Literal["auto", "tokenskip", "instruction", "native", "budget-forcing"] | None = (
        Field(None, description="how the CoT knob is applied (auto: by the model's kind)")
    )
    force_cue: str | None = Field(
        None, min_length=1, max_length=200, description="budget forcing: the answer cue"
    )
    force_answer_tokens: StrictInt | None = Field(
        None, gt=0, le=4096, description="budget forcing: most tokens after the cue"
    )
    scorer: Literal["heuristic", "self-info", "classifier"] | None = Field(
        None, description="prompt scorer"
    )
    batch: bool | None = Field(
        None, description="false keeps this request out of transparent query batching"
    )


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    """An error as Anthropic's API gives one (on ``/v1/messages``)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


class MessagesRequest(BaseModel):
    """An Anthropic Messages request; every field Anthropic defines (system, tools,
    tool_choice, thinking, stop_sequences, metadata, ...) is kept and translated."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="a served model name")
    messages: list[dict[str, Any]] = Field(description="user/assistant turns of content blocks")
    max_tokens: int | None = Field(None, description="required by /v1/messages")
    system: str | list[dict[str, Any]] | None = None
    stream: bool | None = None
    tokenskip: TokenskipOptions | None = None


class ResponsesRequest(BaseModel):
    """An OpenAI Responses request; its other fields (tools, tool_choice, temperature,
    max_output_tokens, reasoning, text, ...) are kept and translated."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(description="a served model name")
    input: str | list[dict[str, Any]] = Field(description="a string, or input items")
    instructions: str | None = None
    stream: bool | None = None
    previous_response_id: str | None = Field(
        None, description="not supported: the gateway stores no responses (400)"
    )
    tokenskip: TokenskipOptions | None = None


class ChatMessage(BaseModel):
    """One message; fields the gateway does not know (``tool_calls``, ``tool_call_id``,
    ``refusal``, ``audio``...) are kept and forwarded as they came."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _parts(cls, v: Any) -> Any:
        if isinstance(v, list):
            for i, part in enumerate(v):
                kind = part.get("type")
                if not isinstance(kind, str):
                    raise ValueError(f"content[{i}] needs a string 'type' (text, image_url, ...)")
                if kind == "text" and not isinstance(part.get("text"), str):
                    raise ValueError(
                        f"content[{i}] is a text part whose 'text' is "
                        f"{type(part.get('text')).__name__}, not a string"
                    )
        return v

    def as_dict(self) -> dict[str, Any]:
        """The message as sent upstream: ``model_dump(exclude_none=True)``, built directly
        (a pydantic dump of every message costs more than the rest of a pass-through)."""
        out: dict[str, Any] = {"role": self.role}
        if self.content is not None:
            out["content"] = self.content
        if self.name is not None:
            out["name"] = self.name
        for k, v in (self.model_extra or {}).items():
            if v is not None:
                out[k] = v
        return out

    def missing_content(self) -> bool:
        """True when the message has no content it needs (OpenAI answers that with 400)."""
        if self.content is not None:
            return False
        extra = self.model_extra or {}
        if self.role == "assistant":
            # tool calls, a function call, a refusal or audio stand in for content
            return (
                not any(extra.get(k) for k in ("tool_calls", "function_call", "refusal", "audio"))
                and "content" not in self.model_fields_set
            )
        return True


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


FORWARDED = (
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "frequency_penalty",
    "presence_penalty", "n", "stop", "seed", "user",
)  # fmt: skip
"""The declared fields of a chat request forwarded upstream as they are, in their order."""


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, gt=0)
    max_completion_tokens: int | None = Field(None, gt=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    n: int | None = Field(None, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    tokenskip: TokenskipOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        return [v] if isinstance(v, str) else v

    def upstream_params(self) -> dict[str, Any]:
        """Everything to forward besides model and messages (tokenskip's options removed):
        ``model_dump(exclude_none=True)`` of those fields, built directly."""
        out = {k: v for k in FORWARDED if (v := getattr(self, k)) is not None}
        for k, v in (self.model_extra or {}).items():
            if v is not None:
                out[k] = v
        return out

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


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


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# -- response models: what the OpenAPI document promises (bodies are built as dicts) ------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape, used for every 4xx and 5xx."""

    error: ErrorDetail


class AssistantMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["assistant"] = "assistant"
    content: str | None = None


class Choice(BaseModel):
    model_config = ConfigDict(extra="allow")

    index: int
    message: AssistantMessage
    finish_reason: str | None = None


class Usage(BaseModel):
    """OpenAI's usage, plus what the gateway counted (in the target model's tokenizer)."""

    model_config = ConfigDict(extra="allow")

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_original: int = Field(
        description="prompt tokens the client's request would have cost: prompt_tokens + saved"
    )
    prompt_tokens_saved: int = Field(description="prompt tokens the compression removed")
    tokens_estimated: bool = Field(
        description="true when a count is the gateway's estimate, not the model's own"
    )


class ChatCompletionResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    tokenskip: dict[str, Any] = Field(
        description="what the gateway did: compressed parts with their ratios, CoT method, "
        "fallbacks"
    )


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class LedgerHealth(BaseModel):
    backlog_rows: int
    """Rows kept on local disk until the ledger's database answers again."""
    dropped_rows: int
    """Rows dropped since start because the backlog was full."""


class Health(BaseModel):
    status: str
    """``ok``, or ``degraded`` while ledger rows wait for their database."""
    models: list[str]
    ledger: LedgerHealth | None = None


class SavingsReport(BaseModel):
    """Ledger totals over an optional window, by model and by kind of saving."""

    model_config = ConfigDict(extra="allow")

    window: dict[str, float | None]
    totals: dict[str, Any]
    by_model: list[dict[str, Any]]
    by_kind: dict[str, Any]


# ---------------------------------------------------------------- bodies the gateway builds
# An upstream that speaks the protocol has its own bodies passed through; these are for
# answers the gateway makes (local models, merged calls), used by every endpoint.

DONE = "data: [DONE]\n\n"
"""The stream's last line."""


def sse(body: dict[str, Any]) -> str:
    """One server-sent event carrying ``body`` as JSON."""
    return f"data: {jsonio.dumps(body).decode()}\n\n"


SAVINGS_USAGE_KEYS = ("prompt_tokens_original", "prompt_tokens_saved", "tokens_estimated")
"""The gateway's own usage fields, carried over into the Responses and Messages usage."""


def savings_usage(usage: dict[str, Any]) -> dict[str, Any]:
    """The gateway's savings fields of a chat usage object."""
    return {k: usage[k] for k in SAVINGS_USAGE_KEYS if k in usage}


def sse_payloads(text: str) -> list[str]:
    """The ``data:`` payloads of a piece of an SSE stream (``[DONE]`` included)."""
    return [line[5:].strip() for line in text.split("\n") if line.startswith("data:")]


def usage_body(
    prompt_tokens: int,
    completion_tokens: int,
    *,
    saved: int,
    estimated: bool,
    original: int | None = None,
) -> dict[str, Any]:
    """OpenAI's usage object with the gateway's savings beside it: ``prompt_tokens`` is what
    was sent, ``prompt_tokens_original`` what would have been (sent + saved by default)."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_original": prompt_tokens + saved if original is None else original,
        "prompt_tokens_saved": saved,
        "tokens_estimated": estimated,
    }


def completion_body(
    request_id: str,
    created: int,
    model: str,
    text: str,
    finish_reason: str,
    usage: dict[str, Any],
    tokenskip: dict[str, Any],
    stop_sequence: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` with one assistant choice; a matched stop string is named in
    the choice's ``stop_reason``, as vLLM names it (OpenAI's protocol has no field for it).
    With ``tool_calls`` the message carries them, and its content is null when empty."""
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if tool_calls:
        message = {"role": "assistant", "content": text or None, "tool_calls": tool_calls}
    choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish_reason}
    if stop_sequence is not None:
        choice["stop_reason"] = stop_sequence
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
        "tokenskip": tokenskip,
    }


def chunk_body(
    request_id: str,
    created: int,
    model: str,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    stop_sequence: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``delta=None`` gives the choice-less usage chunk. A
    matched stop string is the finishing choice's ``stop_reason`` (as vLLM names it)."""
    choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish_reason}
    if stop_sequence is not None:
        choice["stop_reason"] = stop_sequence
    return {
        "id": request_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [choice],
        **extra,
    }
