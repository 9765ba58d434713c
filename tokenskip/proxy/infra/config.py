"""Gateway configuration: environment settings plus a LiteLLM-style YAML file.

```yaml
model_list:                       # LiteLLM's form; existing LiteLLM configs load as they are
  - model_name: gpt-4o-mini
    litellm_params: {model: openai/gpt-4o-mini, api_key: os.environ/OPENAI_API_KEY}
    tokenskip: {prompt_ratio: 0.6, cot_ratio: 0.8, tokenizer: smollm2}
  - model_name: smollm2           # served in-process
    local: {model: smollm2}
  - model_name: smollm2-tokenskip # same base, a TokenSkip LoRA adapter (its tokenskip.json
    local: {model: smollm2, adapter: runs/tokenskip-smollm2}   # marks it TokenSkip-tuned)
router_settings: {num_retries: 2, timeout: 30, cooldown_time: 30, fallbacks: [{a: [b]}]}
general_settings: {master_key: sk-...}          # LiteLLM's key setting is honoured
tokenskip_settings: {api_keys: [sk-...], ledger_url: sqlite:///ledger.db,
                     defaults: {document_ratio: 0.3}, local_max_batch: 8,
                     direct_openai_compatible: true, native_passthrough: true}
```

OpenAI-protocol deployments (``openai/`` or ``hosted_vllm/`` with an ``api_base``) are served
by the direct backend, without litellm's per-call overhead; ``direct_openai_compatible: false``
sends them through litellm too. ``/v1/responses`` requests to such a deployment, and
``/v1/messages`` requests to an Anthropic one (``anthropic/`` with an ``api_base``), go to the
upstream's own endpoint as sent (compression aside); ``native_passthrough: false`` translates
them to chat completions instead.

A model's ``tokenskip`` block holds policy keys (see :class:`CompressionPolicy`), plus
``tokenizer`` (the model or path whose tokenizer counts its tokens exactly; without it counts
use the embedded tokenizer and are labeled estimates), ``delimiter`` (for a remote model
fine-tuned with TokenSkip: its ratio delimiter), ``reasoning`` (its native reasoning control:
openai, anthropic, gemini, qwen3 or none; inferred from the model string where unambiguous)
and ``continue_final: vllm`` (the upstream continues a partial assistant message, so budget
forcing can run on it).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from pydantic_settings import BaseSettings, SettingsConfigDict

from tokenskip.proxy.infra.deployments import is_direct, native_apis
from tokenskip.proxy.infra.policy import BatchSettings, CompressionPolicy
from tokenskip.reasoning import REASONING_KINDS, infer_kind
from tokenskip.runtime import precision
from tokenskip.runtime.configs import EarlyExitConfig, SpeculativeConfig


class Settings(BaseSettings):
    """Service settings, from ``TOKENSKIP_*`` environment variables."""

    model_config = SettingsConfigDict(env_prefix="TOKENSKIP_", extra="ignore")

    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = 8000
    """TCP port to listen on."""
    config: Path | None = None
    """YAML config (LiteLLM model_list form); none serves ``local_model`` alone."""
    api_keys: str = ""
    """Comma-separated client keys; empty means no auth."""
    ledger_url: str | None = None
    """SQLAlchemy URL of the savings ledger (default: one SQLite file per gateway address in
    the tokenskip cache dir, ``ledger-<host>-<port>.sqlite``)."""
    ledger_backlog_rows: int = 100_000
    """Most ledger rows kept on local disk while the ledger's database is unreachable;
    past it the oldest are dropped, logged and counted (``tokenskip_ledger_rows_dropped``)."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Requests larger than this get 413."""
    local_model: str = "smollm2"
    """Model served when there is no config file."""
    local_max_batch: int = 8
    """Most requests one local batch holds."""
    keep_alive_s: float = 75.0
    """Seconds an idle keep-alive connection stays open (uvicorn's default is 5 s, shorter
    than the pools of most clients, which then reuse a connection the server is closing)."""
    compression: bool = True
    """False serves every model with all transforms off (``tokenskip serve --no-compression``,
    ``TOKENSKIP_COMPRESSION=false``): requests pass through untouched, still accounted."""

    @property
    def key_list(self) -> list[str]:
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]


@functools.lru_cache
def get_settings() -> Settings:
    return Settings()


@dataclass(frozen=True)
class ModelEntry:
    """One served model name."""

    name: str
    policy: CompressionPolicy
    litellm_params: dict[str, Any] | None = None
    """Remote deployment parameters (None for a local model)."""
    local_model: str | None = None
    """Base model served in-process (embedded name, directory or GGUF)."""
    adapter: str | None = None
    """LoRA adapter directory for a local model."""
    speculative: SpeculativeConfig | None = None
    """Local model: self-speculative decoding, ``{skip: [layers], k: 4, lookup: true}``; no
    ``skip`` (or ``true``) calibrates the skip set at load (cached beside the model); ``lookup`` drafts
    from earlier occurrences in the prompt and output first."""
    early_exit: EarlyExitConfig | None = None
    """Local model: adaptive early exit (lossy, opt-in), ``{target: 0.95, layers: [...]}``;
    ``true`` calibrates with the defaults at load (cached beside the model)."""
    kernels: bool = False
    """Local model: route RMSNorm and SwiGLU through the Triton kernels (CUDA only; the
    torch references elsewhere)."""
    dtype: str = "float32"
    """Local model: ``float32``, ``bfloat16`` or ``auto`` (:mod:`tokenskip.runtime.precision`)."""
    weights: str = "none"
    """Local model: ``none`` or ``int8`` (weight-only, torchao)."""
    prefill_chunk: int | None = None
    """Local model: a prompt longer than this many tokens that arrives while others decode
    is prefilled this many tokens per step, between their decode steps (chunked prefill);
    None: in one step."""
    tokenizer: str | None = None
    """Model whose tokenizer counts tokens exactly (remote models)."""
    delimiter: str | None = None
    """TokenSkip delimiter of a remote TokenSkip-tuned model."""
    model_info: dict[str, Any] = field(default_factory=dict)
    batch: BatchSettings | None = None
    """Transparent query batching (Query-OPT) for this model; None = off."""
    reasoning: str = "none"
    """Its native reasoning control (:mod:`tokenskip.reasoning`): ``openai``, ``anthropic``,
    ``gemini``, ``qwen3`` or ``none``; from ``tokenskip: {reasoning: ...}``, else inferred
    from the litellm model string where unambiguous."""
    continue_final: str | None = None
    """How the upstream continues a partial assistant message, for budget forcing on a
    remote model: ``vllm`` (``continue_final_message``, vLLM and SGLang) or None (it cannot:
    budget forcing falls back to the instruction)."""
    backend: str = "local"
    """Which backend serves it: ``local``, ``direct`` (OpenAI protocol, no litellm) or ``litellm``."""
    native: tuple[str, ...] = ()
    """The APIs its upstream speaks itself (``responses``, ``messages``): requests to those go
    to it unchanged but for compression (:mod:`tokenskip.proxy.serving.native`)."""

    @property
    def is_local(self) -> bool:
        return self.local_model is not None


@dataclass(frozen=True)
class GatewayConfig:
    models: dict[str, ModelEntry]
    router_settings: dict[str, Any] = field(default_factory=dict)
    api_keys: tuple[str, ...] = ()
    ledger_url: str | None = None
    local_max_batch: int = 8
    defaults: CompressionPolicy = field(default_factory=CompressionPolicy)
    fallbacks: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Models to try, in order, when a model's deployment fails (5xx, 429, timeout)."""

    def litellm_model_list(self) -> list[dict[str, Any]]:
        """The litellm-served entries in the exact form litellm's Router takes."""
        out = []
        for entry in self.models.values():
            if entry.backend == "litellm":
                item = {"model_name": entry.name, "litellm_params": dict(entry.litellm_params)}
                if entry.model_info:
                    item["model_info"] = dict(entry.model_info)
                out.append(item)
        return out


def _entry(
    raw: Any, index: int, defaults: CompressionPolicy, direct_ok: bool, native_ok: bool = True
) -> ModelEntry:
    where = f"model_list[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("model_name"), str):
        raise ValueError(f"{where}: each entry needs a string model_name")
    name = raw["model_name"]
    block = dict(raw.get("tokenskip") or {})
    tokenizer = block.pop("tokenizer", None)
    delimiter = block.pop("delimiter", None)
    reasoning = block.pop("reasoning", None)
    continue_final = block.pop("continue_final", None)
    if reasoning is not None and reasoning not in REASONING_KINDS:
        raise ValueError(
            f"{where} ({name}): tokenskip.reasoning must be one of {', '.join(REASONING_KINDS)}, "
            f"got {reasoning!r}"
        )
    if continue_final not in (None, "vllm"):
        raise ValueError(
            f"{where} ({name}): tokenskip.continue_final must be vllm or left out, got "
            f"{continue_final!r}"
        )
    try:
        batch = BatchSettings.from_mapping(block.pop("batch", None))
        policy = CompressionPolicy.from_mapping(block, defaults)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where} ({name}): tokenskip: {exc}") from None
    local = raw.get("local")
    params = raw.get("litellm_params")
    if (local is None) == (params is None):
        raise ValueError(f"{where} ({name}): give exactly one of litellm_params or local")
    if local is not None:
        if not isinstance(local, dict) or not local.get("model"):
            raise ValueError(
                f"{where} ({name}): local needs a model, e.g. local: {{model: smollm2}}"
            )
        if reasoning not in (None, "none") or continue_final is not None:
            raise ValueError(
                f"{where} ({name}): a local model has no provider reasoning control "
                "(tokenskip.reasoning / continue_final are for remote models); use "
                "cot_method: budget-forcing"
            )
        dtype, weights = str(local.get("dtype", "float32")), str(local.get("weights", "none"))
        try:
            precision.check(dtype, weights)
        except ValueError as exc:
            raise ValueError(f"{where} ({name}): local.{exc}") from None
        chunk = local.get("prefill_chunk")
        if chunk is not None and (
            isinstance(chunk, bool) or not isinstance(chunk, int) or chunk <= 0
        ):
            raise ValueError(
                f"{where} ({name}): local.prefill_chunk must be a positive number of tokens "
                f"(e.g. 256), got {chunk!r}"
            )
        if weights != "none" and local.get("adapter"):
            raise ValueError(
                f"{where} ({name}): local.weights {weights!r} with a LoRA adapter is not "
                "supported (the adapter's layers need the base's own weights); merge the "
                "adapter into the model first, or leave weights out"
            )
        return ModelEntry(
            name,
            policy,
            local_model=str(local["model"]),
            adapter=local.get("adapter"),
            kernels=bool(local.get("kernels", False)),
            dtype=dtype,
            weights=weights,
            prefill_chunk=chunk,
            speculative=_speculative(local.get("speculative"), f"{where} ({name})"),
            early_exit=_early_exit(local, f"{where} ({name})"),
            tokenizer=tokenizer,
            batch=batch,
        )
    if not isinstance(params, dict) or not params.get("model"):
        raise ValueError(f"{where} ({name}): litellm_params needs a model, e.g. openai/gpt-4o-mini")
    return ModelEntry(
        name,
        policy,
        litellm_params=params,
        tokenizer=tokenizer,
        delimiter=delimiter,
        model_info=dict(raw.get("model_info") or {}),
        batch=batch,
        reasoning=reasoning or infer_kind(str(params["model"])),
        continue_final=continue_final,
        backend="direct" if direct_ok and is_direct(params) else "litellm",
        native=native_apis(params) if native_ok else (),
    )


def _speculative(raw: Any, where: str) -> SpeculativeConfig | None:
    return SpeculativeConfig.parse(raw, f"{where}: local.speculative")


def _early_exit(local: dict[str, Any], where: str) -> EarlyExitConfig | None:
    raw = local.get("early_exit")
    if raw not in (None, False) and local.get("speculative") not in (None, False):
        raise ValueError(
            f"{where}: local.speculative (lossless) and local.early_exit (lossy) exclude each "
            "other; pick one"
        )
    return EarlyExitConfig.parse(raw, f"{where}: local.early_exit")


def _fallbacks(raw: Any, models: dict[str, ModelEntry]) -> dict[str, tuple[str, ...]]:
    """LiteLLM's ``fallbacks: [{model: [fallback, ...]}, ...]``, every name checked."""
    out: dict[str, tuple[str, ...]] = {}
    for item in raw or []:
        if not isinstance(item, dict):
            raise ValueError(
                "router_settings.fallbacks must be a list of {model: [fallbacks]} mappings"
            )
        for model, targets in item.items():
            targets = [targets] if isinstance(targets, str) else list(targets or [])
            for name in [model, *targets]:
                if name not in models:
                    raise ValueError(
                        f"router_settings.fallbacks names '{name}', which is not in model_list"
                    )
            out[model] = tuple(targets)
    return out


def parse_config(data: dict[str, Any], settings: Settings | None = None) -> GatewayConfig:
    settings = settings or Settings()
    if not isinstance(data, dict):
        raise ValueError("the config must be a YAML mapping with a model_list")
    ts = dict(data.get("tokenskip_settings") or {})
    try:
        defaults = CompressionPolicy.from_mapping(ts.pop("defaults", None))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"tokenskip_settings.defaults: {exc}") from None
    direct_ok = bool(ts.pop("direct_openai_compatible", True))
    native_ok = bool(ts.pop("native_passthrough", True))
    raw_models = data.get("model_list")
    if not isinstance(raw_models, list) or not raw_models:
        raise ValueError("the config needs a non-empty model_list")
    models: dict[str, ModelEntry] = {}
    for i, raw in enumerate(raw_models):
        entry = _entry(raw, i, defaults, direct_ok, native_ok)
        if entry.name in models:
            raise ValueError(
                f"model_list[{i}]: duplicate model_name '{entry.name}' (load balancing over several deployments is not supported yet)"
            )
        models[entry.name] = entry
    _one_precision_per_base(models)
    keys = list(settings.key_list) + list(ts.pop("api_keys", None) or [])
    master = (data.get("general_settings") or {}).get("master_key")
    if master:
        keys.append(
            os.environ.get(master.split("/", 1)[1], "")
            if str(master).startswith("os.environ/")
            else master
        )
    ledger_url = settings.ledger_url or ts.pop("ledger_url", None)
    max_batch = int(ts.pop("local_max_batch", settings.local_max_batch))
    if ts:
        raise ValueError(f"unknown tokenskip_settings keys {sorted(ts)}")
    router_settings = dict(data.get("router_settings") or {})
    if not settings.compression:
        models = {n: replace(e, policy=replace(e.policy, enabled=False)) for n, e in models.items()}
    return GatewayConfig(
        models=models,
        router_settings=router_settings,
        fallbacks=_fallbacks(router_settings.get("fallbacks"), models),
        api_keys=tuple(k for k in keys if k),
        ledger_url=ledger_url,
        local_max_batch=max_batch,
        defaults=defaults,
    )


def _one_precision_per_base(models: dict[str, ModelEntry]) -> None:
    """Local models over one base share its weights (one engine), so they share its dtype
    and weight format: a config that asks for two is refused, naming both."""
    seen: dict[str, ModelEntry] = {}
    for entry in models.values():
        if not entry.is_local:
            continue
        first = seen.setdefault(entry.local_model or "", entry)
        if (first.dtype, first.weights) != (entry.dtype, entry.weights):
            raise ValueError(
                f"models '{first.name}' and '{entry.name}' share the base "
                f"'{entry.local_model}' (one copy of its weights) but ask for dtype/weights "
                f"{first.dtype}/{first.weights} and {entry.dtype}/{entry.weights}; give them "
                "the same"
            )


def load_config(settings: Settings) -> GatewayConfig:
    """The config file named by the settings, or one local model with default policy."""
    if settings.config is None:
        entry = ModelEntry(
            settings.local_model,
            CompressionPolicy(enabled=settings.compression),
            local_model=settings.local_model,
        )
        return GatewayConfig(
            models={entry.name: entry},
            api_keys=tuple(settings.key_list),
            ledger_url=settings.ledger_url,
            local_max_batch=settings.local_max_batch,
        )
    try:
        data = yaml.safe_load(Path(settings.config).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read config {settings.config}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config {settings.config} is not valid YAML: {exc}") from None
    return parse_config(data, settings)
