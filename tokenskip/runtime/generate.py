"""Generators: where evaluation gets its completions, locally or over HTTP.

``LocalGenerator`` runs a model in-process through the proxy's own batched engine (the
runtime the gateway serves with, so evaluation measures what users get), with an optional
LoRA adapter. ``OpenAIGenerator`` calls any OpenAI-compatible server (the tokenskip proxy
included, to measure end to end) with a bounded number of concurrent requests.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenskip.errors import InvalidInputError
from tokenskip.multi_query import TailCheck


@dataclass(frozen=True)
class Prompt:
    """Chat messages for one sample; ``suffix`` is appended to the last user turn
    (the TokenSkip ratio), ``extra_body`` goes to an OpenAI-compatible server as is."""

    messages: tuple[dict[str, Any], ...]
    suffix: str = ""
    adapter: bool = False
    """Run with the evaluated adapter (local) rather than the base model."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    continuation: tuple[int, ...] = ()
    """Token ids the assistant's turn already holds (local models): generation continues
    after them, as if the model had written them (budget forcing's reasoning + cue)."""

    def with_suffix(self) -> list[dict[str, Any]]:
        messages = [dict(m) for m in self.messages]
        if self.suffix:
            messages[-1]["content"] = messages[-1]["content"] + self.suffix
        return messages


@dataclass(frozen=True)
class Generation:
    text: str
    output_tokens: int
    finished: bool
    """True if the model stopped by itself (EOS / stop), False if cut off at the budget."""
    seconds: float
    token_ids: tuple[int, ...] = ()


OnResult = Callable[[int, Generation], None]
"""Called with (index in prompts, generation) as soon as each sample is done."""


class Generator(Protocol):
    name: str

    def generate(
        self, prompts: list[Prompt], max_new_tokens: int, on_result: OnResult | None = None
    ) -> list[Generation]: ...


class LocalGenerator:
    """Greedy generation with a local model (and adapter) through the batched engine, with
    OpenAI's frequency and presence penalties when given (0: plain greedy)."""

    def __init__(
        self,
        model_name: str,
        *,
        adapter: str | None = None,
        batch_size: int = 8,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        dtype: str = "float32",
        device: str | None = None,
    ):
        import torch

        from tokenskip.models import load_model
        from tokenskip.runtime.engine import Engine
        from tokenskip.runtime.runner import Runner

        if device is None:  # a GPU where there is one: collection and evaluation run there
            device = "cuda" if torch.cuda.is_available() else "cpu"
        loaded = load_model(model_name, dtype=getattr(torch, dtype), device=device)
        self.tokenizer = loaded.tokenizer
        adapters = {"eval": adapter} if adapter else {}
        self.engine = Engine(Runner(loaded.model, loaded.tokenizer, adapters), max_batch=batch_size)
        self.name = model_name + (f"+{adapter}" if adapter else "")
        self.penalties = {
            "frequency_penalty": frequency_penalty,
            "presence_penalty": presence_penalty,
        }

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        return list(
            self.tokenizer.apply_chat_template(
                prompt.with_suffix(), add_generation_prompt=True, tokenize=True, return_dict=False
            )
        ) + list(prompt.continuation)

    def generate(
        self,
        prompts: list[Prompt],
        max_new_tokens: int,
        on_result: OnResult | None = None,
        stop_when: Callable[[str], bool] | None = None,
    ) -> list[Generation]:
        """``stop_when(the last 4,096 characters)``, checked every 64 new characters
        (:class:`tokenskip.multi_query.TailCheck`), ends a sample early (kept as not finished),
        e.g. :func:`tokenskip.multi_query.repeating`."""
        from tokenskip.runtime.engine import GenerationRequest

        done = threading.Semaphore(0)
        results: dict[int, Generation] = {}

        def finished(index: int, r: GenerationRequest) -> None:
            if r.error is None:
                g = Generation(
                    r.text,
                    len(r.output_ids),
                    r.finish_reason == "stop",
                    (r.finished_at or time.perf_counter()) - r.submitted_at,
                    tuple(r.output_ids),
                )
                results[index] = g
                if on_result is not None:
                    on_result(index, g)
            done.release()

        requests = []
        for index, prompt in enumerate(prompts):
            if prompt.adapter and "eval" not in self.engine.runner.adapters:
                raise InvalidInputError("a TokenSkip method needs --adapter")
            r = GenerationRequest(
                prompt_ids=self.prompt_ids(prompt),
                max_new_tokens=max_new_tokens,
                adapter="eval" if prompt.adapter else None,
                **self.penalties,
            )
            r.on_done = lambda req, i=index: finished(i, req)
            if stop_when is not None:
                r.on_delta = _stopper(r, stop_when)
            requests.append(r)
        for r in requests:
            self.engine.submit(r)
        for _ in requests:
            done.acquire()
        failed = [r for r in requests if r.error is not None]
        if failed:
            raise RuntimeError(f"generation failed: {failed[0].error}") from failed[0].error
        return [results[i] for i in range(len(prompts))]

    def close(self) -> None:
        self.engine.close()


def _stopper(request: Any, stop_when: Callable[[str], bool]) -> Callable[[str], None]:
    """An ``on_delta`` that cancels ``request`` once ``stop_when`` holds for its text."""
    watch = TailCheck(stop_when)

    def on_delta(piece: str) -> None:
        if watch.feed(piece):
            request.cancelled.set()

    return on_delta


class OpenAIGenerator:
    """Chat completions from an OpenAI-compatible server, ``concurrency`` at a time."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str = "unused",
        concurrency: int = 8,
        timeout: float = 600,
    ):
        import openai

        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key, max_retries=2, timeout=timeout
        )
        self.model = model
        self.concurrency = concurrency
        self.name = f"{model}@{base_url}"
        try:
            served = {m.id for m in self.client.models.list().data}
        except openai.APIConnectionError:
            raise InvalidInputError(f"{base_url} does not answer; is the server running?") from None
        except openai.APIStatusError as exc:
            raise InvalidInputError(
                f"{base_url}/models answered {exc.status_code}: {exc.message}"
            ) from None
        if model not in served:
            raise InvalidInputError(
                f"{base_url} does not serve '{model}' (it serves: {', '.join(sorted(served))})"
            )

    def _one(self, prompt: Prompt, max_new_tokens: int) -> Generation:
        started = time.perf_counter()
        r = self.client.chat.completions.create(
            model=self.model,
            messages=prompt.with_suffix(),
            max_tokens=max_new_tokens,
            temperature=0,
            extra_body=prompt.extra_body or None,
        )
        choice = r.choices[0]
        tokens = r.usage.completion_tokens if r.usage else 0
        return Generation(
            choice.message.content or "",
            tokens,
            choice.finish_reason != "length",
            time.perf_counter() - started,
        )

    def generate(
        self, prompts: list[Prompt], max_new_tokens: int, on_result: OnResult | None = None
    ) -> list[Generation]:
        def one(index: int) -> Generation:
            g = self._one(prompts[index], max_new_tokens)
            if on_result is not None:
                on_result(index, g)
            return g

        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(one, range(len(prompts))))

    def close(self) -> None:
        self.client.close()
