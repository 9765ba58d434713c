"""Request and response models mirroring OpenAI's chat-completions schema.

Unknown fields are kept (``extra="allow"``) and passed upstream untouched, so a client can use
any provider parameter the gateway does not know about. tokenskip's own options travel in the
``tokenskip`` extension object (the OpenAI SDK sends it with ``extra_body``).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class TokenskipOptions(BaseModel):
    """Per-request compression policy; any field left out falls back to the model's default."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None = Field(None, description="false turns every tokenskip transform off")
    prompt_ratio: float | None = Field(
        None, gt=0, le=1, description="keep ratio for context (documents, passages)"
    )
    instruction_ratio: float | None = Field(
        None, gt=0, le=1, description="keep ratio for system/developer instructions"
    )
    tool_ratio: float | None = Field(
        None, gt=0, le=1, description="keep ratio for tool outputs beyond lossless transforms"
    )
    lossless: bool | None = Field(None, description="false skips the lossless transforms")
    guards: bool | None = Field(None, description="false turns the meaning guards off")
    cache_safe: bool | None = Field(
        None, description="false lets compression change content before a cache_control mark"
    )
    cot_ratio: float | None = Field(None, gt=0, le=1, description="keep ratio for the reasoning")
    scorer: Literal["heuristic", "self-info"] | None = Field(None, description="prompt scorer")
    batch: bool | None = Field(
        None, description="false keeps this request out of transparent query batching"
    )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


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
        """Everything to forward besides model and messages (tokenskip's options removed)."""
        data = self.model_dump(
            exclude_none=True,
            exclude={"model", "messages", "tokenskip", "stream", "stream_options"},
        )
        return data

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(
    message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
