"""Tool calls of local models whose chat template defines them.

The template renders the tools (Qwen2.5's ``# Tools`` block with ``<tools>`` JSON); the model
writes each call in the template's own markup, ``<tool_call>{"name": ..., "arguments":
{...}}</tool_call>`` (the Hermes format Qwen2.5 uses). This module knows that markup: it
finds which templates define it, turns an OpenAI request's messages and ``tool_choice`` into
what the template and the model expect, and parses the model's text back into OpenAI
``tool_calls``. Text that is not a well-formed call of an offered function stays text: a
model's slip is its answer, never a 500.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ToolFormat:
    """How a template's model writes a tool call: a JSON object between two tags."""

    open: str
    close: str

    def forced_prefix(self, tool_choice: Any) -> str:
        """What the answer must begin with under ``tool_choice``: the open tag for
        ``"required"``, the open tag and the function's name for a named function, nothing
        for ``"auto"``."""
        if tool_choice == "required":
            return self.open + "\n"
        if isinstance(tool_choice, dict):
            name = (tool_choice.get("function") or {}).get("name")
            return self.open + "\n" + '{"name": ' + json.dumps(name) + ', "arguments": '
        return ""


HERMES = ToolFormat("<tool_call>", "</tool_call>")
"""Qwen2.5's (and Hermes') markup."""
FORMATS = (HERMES,)


def tool_format(tokenizer: Any) -> ToolFormat | None:
    """The tool-call markup of ``tokenizer``'s chat template, or None if the template defines
    no tools (or tools in a markup this module does not know)."""
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, dict):
        template = template.get("tool_use") or template.get("default") or ""
    if "tools" not in template:
        return None
    return next((f for f in FORMATS if f.open in template and f.close in template), None)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI chat messages as chat templates read them: text content, an assistant's
    ``tool_calls`` with their arguments as objects (the templates write them with
    ``tojson``; OpenAI sends a JSON string), a tool result's content as text."""
    out = []
    for m in messages:
        item: dict[str, Any] = {"role": m["role"], "content": _text(m.get("content"))}
        calls = m.get("tool_calls")
        if calls:
            item["tool_calls"] = [
                {
                    "type": "function",
                    "function": {
                        "name": (c.get("function") or {}).get("name", ""),
                        "arguments": _arguments((c.get("function") or {}).get("arguments")),
                    },
                }
                for c in calls
            ]
        if m.get("tool_call_id"):
            item["tool_call_id"] = m["tool_call_id"]
        out.append(item)
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value if value is not None else {}


@dataclass(frozen=True)
class Parsed:
    """A model's answer split into text and OpenAI tool calls."""

    content: str | None
    tool_calls: list[dict[str, Any]]


def parse(text: str, fmt: ToolFormat, names: set[str]) -> Parsed | None:
    """The calls in ``text`` as OpenAI ``tool_calls`` (ids ``call_…``, arguments as a JSON
    string), with the text around them as content (None when there is none). None when
    ``text`` holds no call, or any call is malformed: not JSON, no ``name`` among ``names``,
    arguments that are not an object, an open tag never closed before more text.

    A model that leaves the tags out (Qwen2.5-Coder-0.5B writes the bare object, or fences
    it as JSON) is read too, but only when the whole answer is that object (or a list of
    them): JSON inside prose stays prose."""
    if fmt.open not in text:
        return _bare(text, names)
    pieces, calls, rest = [], [], text
    while fmt.open in rest:
        before, _, after = rest.partition(fmt.open)
        pieces.append(before)
        body, closed, rest = after.partition(fmt.close)
        if not closed and rest.strip():
            return None
        call = _call(body, names)
        if call is None:
            return None
        calls.append(call)
    pieces.append(rest)
    content = "".join(pieces).strip()
    return Parsed(content or None, calls)


_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def _bare(text: str, names: set[str]) -> Parsed | None:
    body = text.strip()
    fenced = _FENCE.fullmatch(body)
    if fenced:
        body = fenced.group(1)
    if not body.startswith(("{", "[")):
        return None
    try:
        value = json.loads(body)
    except ValueError:
        return None
    items = value if isinstance(value, list) else [value]
    calls = [_call_value(v, names) for v in items]
    if not calls or any(c is None for c in calls):
        return None
    return Parsed(None, calls)  # type: ignore[arg-type]


def _call(body: str, names: set[str]) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return _call_value(value, names)


def _call_value(value: Any, names: set[str]) -> dict[str, Any] | None:
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    arguments = value.get("arguments", value.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return None
    if not isinstance(arguments, dict):
        return None
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": value["name"], "arguments": json.dumps(arguments)},
    }


def function_names(tools: list[dict[str, Any]] | None) -> set[str]:
    """The names of the functions offered."""
    return {
        (t.get("function") or {}).get("name")
        for t in tools or []
        if isinstance(t, dict) and t.get("type") == "function"
    } - {None}


class CallBuffer:
    """Streams a model's text, holding back what may be a tool call: text before the open
    tag goes out as it comes (less a tail that could begin the tag); from the tag on
    everything waits for the end, where :meth:`finish` parses it. An answer that opens like a
    bare call (``{``, ``[`` or a code fence) waits for the end too."""

    def __init__(self, fmt: ToolFormat, prefix: str = ""):
        self.fmt = fmt
        self.text = prefix
        self._sent = 0
        self._held = bool(prefix)

    def feed(self, piece: str) -> str:
        """The part of the text so far that can go out now."""
        self.text += piece
        if self._held:
            return ""
        if self._sent == 0:
            head = self.text.lstrip()
            if not head or head[0] in "{[" or (head[0] == "`" and "```".startswith(head[:3])):
                if head.startswith(("{", "[", "```")):
                    self._held = True
                return ""  # nothing but a possible call yet
        at = self.text.find(self.fmt.open, self._sent)
        if at >= 0:
            self._held = True
            out, self._sent = self.text[self._sent : at], at
            return out
        safe = len(self.text)
        for k in range(min(len(self.fmt.open) - 1, len(self.text)), 0, -1):
            if self.fmt.open.startswith(self.text[-k:]):
                safe = len(self.text) - k
                break
        out, self._sent = self.text[self._sent : safe], max(self._sent, safe)
        return out

    def finish(self, names: set[str]) -> tuple[str, Parsed | None]:
        """What was held back, and the calls parsed from it: with calls, the held text
        outside them is the parsed content; without (no call, or a malformed one), the held
        text is the rest of the answer, as text."""
        held = self.text[self._sent :]
        return held, parse(held, self.fmt, names)
