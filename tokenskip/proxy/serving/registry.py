"""The models of one gateway: their backends, local engines, counting tokenizers and scorers.

Everything here is built once (local models and tokenizers at start, scorers on first use)
and shared by every request; worker threads may ask for a tokenizer or scorer at once, so
lazy loads happen under one lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tokenskip.errors import TokenskipError
from tokenskip.models import DEFAULT_MODEL, load_model, load_tokenizer
from tokenskip.proxy.errors import ProxyError
from tokenskip.proxy.infra.backends.direct import DirectBackend
from tokenskip.proxy.infra.backends.local import LocalBackend
from tokenskip.proxy.infra.backends.upstream import cost
from tokenskip.proxy.infra.config import GatewayConfig, ModelEntry
from tokenskip.proxy.protocol import short
from tokenskip.proxy.serving.prefix import PrefixTracker
from tokenskip.proxy.serving.prompt import CompressionMemo
from tokenskip.runtime import precision
from tokenskip.runtime.early_exit import early_exit_policy
from tokenskip.runtime.speculative import speculative_settings
from tokenskip.scorers import CachedScorer, HeuristicScorer, SelfInfoScorer, TokenClassifierScorer
from tokenskip.tokens import TextTokenizer

log = logging.getLogger(__name__)


@dataclass
class Counter:
    """The tokenizer that counts a model's tokens, and whether it is that model's own."""

    tokenizer: TextTokenizer
    exact: bool


def build_scorer(
    name: str,
    tokenizer: TextTokenizer,
    model: str | None,
    embedded: Callable[[], tuple[Any, TextTokenizer]] | None = None,
) -> Any:
    """A prompt scorer by its policy name: ``heuristic`` over the counting ``tokenizer``,
    ``classifier`` from the directory ``model``, ``self-info`` with ``model`` (a causal LM)
    or the embedded model (``embedded()`` gives it loaded, when the caller has it)."""
    if name == "heuristic":
        return CachedScorer(HeuristicScorer(tokenizer))
    if name == "classifier":
        return CachedScorer(TokenClassifierScorer.from_pretrained(model))
    if model and model != DEFAULT_MODEL:
        loaded = load_model(model)
        return CachedScorer(SelfInfoScorer(loaded.model, TextTokenizer(loaded.tokenizer, model)))
    if embedded is not None:
        return CachedScorer(SelfInfoScorer(*embedded()))
    loaded = load_model(DEFAULT_MODEL)
    return CachedScorer(
        SelfInfoScorer(loaded.model, TextTokenizer(loaded.tokenizer, DEFAULT_MODEL))
    )


def unknown_model(name: str) -> ProxyError:
    return ProxyError(
        404,
        f"The model '{short(name)}' does not exist on this gateway; GET /v1/models lists the "
        "served models",
        code="model_not_found",
        param="model",
    )


class Registry:
    """Backends, local engines, tokenizers and prompt scorers of the configured models."""

    def __init__(self, config: GatewayConfig):
        self.config = config
        self.local = LocalBackend()
        self.remote = None
        self.direct = None
        self._counters: dict[str, Counter] = {}
        self._scorers: dict[tuple[str, str, str], Any] = {}
        self._self_info_lm: Any = None
        self._lazy_lock = threading.RLock()
        self.prefixes = PrefixTracker()
        """Prefixes sent upstream after compression (cache safety, measured)."""
        self.memo = CompressionMemo()
        """Each text's compression, so a text resent on a later turn is not compressed again."""
        self._load_local()
        model_list = config.litellm_model_list()
        if model_list:
            from tokenskip.proxy.infra.backends.litellm import RemoteBackend

            self.remote = RemoteBackend(model_list, config.router_settings)
        direct = {e.name: e.litellm_params for e in config.models.values() if e.backend == "direct"}
        if direct:
            self.direct = DirectBackend(direct, config.router_settings)
        self.native = None
        native = {e.name: e.litellm_params for e in config.models.values() if e.native}
        if native:
            from tokenskip.proxy.infra.backends.native import NativeBackend

            self.native = NativeBackend(native, config.router_settings)
        for entry in config.models.values():
            self.counter(entry)  # load tokenizers now, not on a request's event loop
            if entry.litellm_params is not None:
                cost(entry.litellm_params, 0, 0)  # and the price map (litellm's, ~3 s once)

    def _load_local(self) -> None:
        bases: dict[str, list[ModelEntry]] = {}
        for entry in self.config.models.values():
            if entry.is_local:
                bases.setdefault(entry.local_model, []).append(entry)
        for base, entries in bases.items():
            dtype, weights = entries[0].dtype, entries[0].weights  # one per base (config)
            # loaded in its dtype: a float32 copy first would double the peak memory
            loaded = load_model(base, dtype=precision.torch_dtype(precision.resolve(dtype)))
            chosen = precision.apply(loaded.model, dtype, weights, name=base)
            log.info("%s: %s, weights %s", base, chosen, weights)
            if any(e.kernels for e in entries):
                from tokenskip.runtime.kernels import install

                log.info("%s: %d modules on the kernel path", base, install(loaded.model))
            adapters = {e.name: e.adapter for e in entries if e.adapter}
            spec = next((e.speculative for e in entries if e.speculative is not None), None)
            exits = next((e.early_exit for e in entries if e.early_exit is not None), None)
            chunk = next((e.prefill_chunk for e in entries if e.prefill_chunk), None)
            self.local.add_engine(
                base,
                loaded.model,
                loaded.tokenizer,
                max_batch=self.config.local_max_batch,
                adapters=adapters,
                speculative=None if spec is None else speculative_settings(base, loaded, spec),
                early_exit=None if exits is None else early_exit_policy(base, loaded, exits),
                prefill_chunk=chunk,
            )
            for e in entries:
                self.local.serve(e.name, base, e.name if e.adapter else None)
            if base == DEFAULT_MODEL and not adapters and (chosen, weights) == ("float32", "none"):
                # Reused by the self-info prompt scorer; not when adapters are injected into
                # it, since the engine switches them while the scorer may be running.
                self._self_info_lm = loaded.model
            counter = Counter(TextTokenizer(loaded.tokenizer, name=base), exact=True)
            for e in entries:
                self._counters[e.name] = counter

    async def aclose(self) -> None:
        self.local.close()
        if self.direct is not None:
            await self.direct.aclose()
        if self.native is not None:
            await self.native.aclose()

    # -- lookups --------------------------------------------------------------------------
    def entry(self, name: str) -> ModelEntry:
        """The served model called ``name``; an OpenAI-shaped 404 if there is none."""
        found = self.config.models.get(name)
        if found is None:
            raise unknown_model(name)
        return found

    def backend(self, entry: ModelEntry) -> Any:
        return {"local": self.local, "direct": self.direct, "litellm": self.remote}[entry.backend]

    def chain(self, entry: ModelEntry) -> list[ModelEntry]:
        """The model, then its fallbacks in order."""
        return [entry] + [
            self.config.models[name] for name in self.config.fallbacks.get(entry.name, ())
        ]

    def delimiter(self, entry: ModelEntry) -> str | None:
        """The TokenSkip delimiter the model was trained with, if any."""
        if entry.is_local:
            return self.local.models[entry.name].delimiter or entry.delimiter
        return entry.delimiter

    def context_window(self, entry: ModelEntry) -> int | None:
        """Prompt + completion tokens the model takes, where known."""
        if entry.is_local:
            return self.local.max_positions(entry.name)
        limit = (entry.model_info or {}).get("max_input_tokens")
        return int(limit) if limit else None

    # -- tokenizers and scorers -----------------------------------------------------------
    def counter(self, entry: ModelEntry) -> Counter:
        found = self._counters.get(entry.name)
        if found is not None:
            return found
        with self._lazy_lock:  # worker threads may ask at once: load each tokenizer once
            return self._counter_locked(entry)

    def _counter_locked(self, entry: ModelEntry) -> Counter:
        found = self._counters.get(entry.name)
        if found is None:
            name = entry.tokenizer or DEFAULT_MODEL
            shared = next((c for c in self._counters.values() if c.tokenizer.name == name), None)
            tokenizer = (
                shared.tokenizer if shared else TextTokenizer(load_tokenizer(name), name=name)
            )
            found = self._counters[entry.name] = Counter(
                tokenizer, exact=entry.tokenizer is not None
            )
        return found

    def scorer(self, name: str, counter: Counter, model: str | None = None) -> Any:
        key = (name, counter.tokenizer.name, model or "")
        found = self._scorers.get(key)
        if found is not None:
            return found
        with self._lazy_lock:
            return self._scorer_locked(name, counter, model, key)

    def _scorer_locked(
        self, name: str, counter: Counter, model: str | None, key: tuple[str, str, str]
    ) -> Any:
        found = self._scorers.get(key)
        if found is None:
            try:
                found = self._build_scorer(name, counter, model)
            except (TokenskipError, OSError) as exc:
                raise ProxyError(
                    400, f"tokenskip: the {name} scorer cannot be loaded: {exc}", param="tokenskip"
                ) from None
            self._scorers[key] = found
        return found

    def _build_scorer(self, name: str, counter: Counter, model: str | None) -> Any:
        return build_scorer(name, counter.tokenizer, model, self._embedded_lm)

    def _embedded_lm(self) -> tuple[Any, TextTokenizer]:
        """The embedded model for the self-info scorer: the served one if it is served."""
        if self._self_info_lm is None:
            self._self_info_lm = load_model(DEFAULT_MODEL).model
        return self._self_info_lm, self._tokenizer(DEFAULT_MODEL)

    def _tokenizer(self, name: str) -> TextTokenizer:
        for c in self._counters.values():
            if c.tokenizer.name == name:
                return c.tokenizer
        return TextTokenizer(load_tokenizer(name), name=name)
