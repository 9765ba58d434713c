"""A small token classifier in the LLMLingua-2 form, distilled offline for the fast path.

LLMLingua-2 (Pan et al. 2024) trains an encoder to label each token keep/drop and uses the
probability of "keep" as its importance. Its labels come from GPT-4 compressions; here they
come from what can be made offline:

- a teacher's importance: the self-information of each word under a larger causal LM
  (Qwen2.5-Coder-0.5B by default, ``tokenskip.models.SPLIT``), the best scorer this machine
  can run;
- the meaning guards: a guarded word is always labeled keep, so the student learns to
  score negations, limits and conditions high even where they are predictable.

A word is labeled keep when it is guarded or among the ``label_ratio`` highest-scoring
words of its text. The student is a 2-layer encoder (hidden 128) over the *target*
tokenizer's ids, its embeddings initialized from a PCA of the target model's own embedding
matrix; a few minutes of CPU training. It is saved as an ordinary Hugging Face
token-classification model with its tokenizer, so ``TokenClassifierScorer.from_pretrained``
(CLI ``--scorer classifier --scorer-model DIR``, or the gateway's ``scorer: classifier``)
loads it.

The training corpus is text already on any machine with this project installed, none of it
from the benchmarks: the descriptions, documentation files and docstrings of the installed
Python packages, the copyright notices of the system's packages, and GSM8K train
questions.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import random
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tokenskip.errors import InvalidInputError

log = logging.getLogger(__name__)

META_FILE = "classifier.json"
IGNORE_INDEX = -100


@dataclass(frozen=True)
class ClassifierConfig:
    """What the distilled classifier is trained on and how."""

    teacher: str = "qwen2.5-coder-0.5b"
    """Causal LM whose self-information ranks the words (any name ``load_model`` takes)."""
    teacher_dtype: str = "bfloat16"
    """Teacher weights' dtype: bf16 runs ~3x faster than fp32 on CPUs with AVX-512 BF16 and
    ranks words the same for labeling purposes; ``float32`` for exactness."""
    target: str = "smollm2"
    """Model whose tokenizer the classifier reads (and whose embeddings initialize it)."""
    num_texts: int = 1500
    """Corpus chunks to label and train on."""
    label_ratio: float = 0.5
    """Share of each text's words labeled keep by the teacher."""
    label_guards: bool = False
    """Also label every guarded word keep. Off by default: the guards hold their words at
    compression time whatever the scorer says, and on prose they cover ~80% of the words, so
    labeling them made 93% of the labels keep and the student learned nothing but the
    majority (measured: held-out accuracy 0.929 against a 0.928 baseline)."""
    hidden: int = 128
    """Width of the encoder."""
    layers: int = 2
    """Encoder layers."""
    heads: int = 2
    """Attention heads."""
    window: int = 256
    """Tokens per training row."""
    epochs: float = 3.0
    """Passes over the labeled corpus."""
    batch_size: int = 16
    """Rows per step."""
    learning_rate: float = 1e-3
    """AdamW peak learning rate (linear warmup, cosine decay)."""
    seed: int = 0
    """Corpus sampling and initialization seed."""
    held_out: float = 0.1
    """Share of texts kept out of training to measure agreement with the teacher."""

    def __post_init__(self) -> None:
        if not 0.0 < self.label_ratio < 1.0:
            raise ValueError(f"label_ratio must be in (0, 1), got {self.label_ratio}")
        if not 0.0 < self.held_out < 0.5:
            raise ValueError(f"held_out must be in (0, 0.5), got {self.held_out}")
        for name in ("num_texts", "hidden", "layers", "heads", "window", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.teacher_dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(
                f"teacher_dtype must be bfloat16, float16 or float32, got {self.teacher_dtype!r}"
            )
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ValueError("epochs and learning_rate must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- corpus ------------------------------------------------------------------------------

_MARKUP = re.compile(r"^\s*(?:[#>*|=`\-]|\.\.|\d+\.\s|\$ |>>>)")


def _site_packages() -> list[Path]:
    return [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]


def _package_texts() -> Iterator[tuple[str, str]]:
    for root in _site_packages():
        for meta in sorted(root.glob("*.dist-info/METADATA")):
            text = meta.read_text(errors="ignore")
            body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
            yield "package-description", body
        for pattern in ("**/*.md", "**/*.rst", "**/README*.txt"):
            for doc in sorted(root.glob(pattern))[:2000]:
                if doc.stat().st_size < 400_000:
                    yield "package-doc", doc.read_text(errors="ignore")


def _docstring_texts(max_files: int = 4000) -> Iterator[tuple[str, str]]:
    """Docstrings of the installed packages' modules, classes and functions (prose only)."""
    import ast

    seen = 0
    for root in _site_packages():
        for path in sorted(root.glob("*/**/*.py")):
            if seen >= max_files:
                return
            if "test" in path.parts[-2] or path.stat().st_size > 300_000:
                continue
            seen += 1
            try:
                tree = ast.parse(path.read_text(errors="ignore"))
            except (SyntaxError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc and len(doc.split()) >= 40:
                        # the prose before the first "Args:"-style section
                        yield (
                            "docstring",
                            re.split(
                                r"\n\s*(?:Args|Arguments|Parameters|Returns|Example|Examples|Raises|Note)s?:?\s*\n",
                                doc,
                            )[0],
                        )


def _copyright_texts() -> Iterator[tuple[str, str]]:
    for path in sorted(Path("/usr/share/doc").glob("*/copyright")):
        try:
            yield "copyright-notice", path.read_text(errors="ignore")
        except OSError:
            continue


def _gsm8k_texts() -> Iterator[tuple[str, str]]:
    from tokenskip.tasks.gsm8k import load_gsm8k

    try:
        dataset = load_gsm8k(split="train")
    except Exception:  # noqa: BLE001 - the data set is optional here
        return
    for problem in dataset.problems:
        yield "gsm8k-question", problem.question


def prose_chunks(text: str, min_words: int = 40, max_words: int = 320) -> Iterator[str]:
    """Paragraph groups of ordinary prose (markup, code and tables left out)."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    buf: list[str] = []
    count = 0
    for para in paragraphs:
        lines = para.splitlines()
        if sum(bool(_MARKUP.match(line)) for line in lines) > len(lines) / 3:
            continue
        words = len(para.split())
        letters = sum(c.isalpha() for c in para)
        if words < 8 or letters < 0.6 * len(para):
            continue
        if count + words > max_words and count >= min_words:
            yield "\n\n".join(buf)
            buf, count = [], 0
        flat = " ".join(line.strip() for line in lines)
        while words > max_words:  # a long paragraph: cut at the sentence nearest the limit
            cut = _sentence_cut(flat, max_words)
            yield flat[:cut].strip()
            flat = flat[cut:].strip()
            words = len(flat.split())
        buf.append(flat)
        count += words
    if count >= min_words:
        yield "\n\n".join(buf)


def _sentence_cut(text: str, max_words: int) -> int:
    """Where to cut ``text`` so the first piece has at most ``max_words`` words."""
    spaces = [m.start() for m in re.finditer(r"\s+", text)]
    limit = spaces[max_words - 1] if len(spaces) >= max_words else len(text)
    ends = [m.end() for m in re.finditer(r"[.!?;:]\s", text[:limit])]
    return ends[-1] if ends and ends[-1] > limit // 2 else limit


def collect_corpus(num_texts: int, seed: int = 0) -> list[dict[str, str]]:
    """``num_texts`` distinct prose chunks ``{source, text}``, sampled over the sources."""
    seen: set[str] = set()
    pools: dict[str, list[str]] = {}
    sources = [*_package_texts(), *_docstring_texts(), *_copyright_texts(), *_gsm8k_texts()]
    for source, text in sources:
        for chunk in prose_chunks(text) if source != "gsm8k-question" else [text]:
            key = hashlib.sha1(chunk.encode()).hexdigest()
            if key not in seen:
                seen.add(key)
                pools.setdefault(source, []).append(chunk)
    if not pools:
        raise InvalidInputError("no corpus text found (no site-packages documentation?)")
    rng = random.Random(seed)
    # GSM8K questions are short; a fifth of the corpus at most, the rest shared evenly
    shares = {s: (0.2 if s == "gsm8k-question" else 1.0) for s in pools}
    total = sum(shares.values())
    out: list[dict[str, str]] = []
    for source, pool in sorted(pools.items()):
        rng.shuffle(pool)
        take = min(len(pool), math.ceil(num_texts * shares[source] / total))
        out.extend({"source": source, "text": t} for t in pool[:take])
    rng.shuffle(out)
    return out[:num_texts]


# -- labels ------------------------------------------------------------------------------


def word_labels(
    text: str, teacher_scores: np.ndarray, guarded: np.ndarray, label_ratio: float
) -> np.ndarray:
    """``(num_units,)`` 0/1 keep labels: guarded units, and the top ``label_ratio`` of the
    rest by the teacher's score (whitespace-only units get no label: -100)."""
    labels = np.zeros(len(teacher_scores), dtype=np.int64)
    labels[guarded] = 1
    free = np.flatnonzero(~guarded)
    num_keep = int(round(label_ratio * len(free)))
    if num_keep:
        best = free[np.argsort(-teacher_scores[free], kind="stable")[:num_keep]]
        labels[best] = 1
    return labels


def teacher_records(
    corpus: Sequence[dict[str, str]], teacher: Any, target: Any, progress: bool = True
) -> list[dict[str, Any]]:
    """Each text as target ids, the word each token starts in, and per word the teacher's
    score, whether a guard holds it and whether it is blank. Labels are made from these
    (:func:`token_labels`), so changing how they are made needs no new teacher pass."""
    from tokenskip.guards import GUARDS
    from tokenskip.units import segment, span_mask, unit_scores

    out = []
    started = time.perf_counter()
    for n, item in enumerate(corpus):
        text = item["text"]
        units = segment(text)
        scored = teacher.tokenizer.encode(text)
        scores = unit_scores(units, scored, teacher.score(scored.ids))
        enc = target.encode(text)
        unit_of = np.maximum(np.searchsorted(units.start, enc.starts, side="right") - 1, 0)
        out.append(
            {
                "ids": enc.ids,
                "unit_of": unit_of.tolist(),
                "scores": [round(float(x), 4) for x in scores],
                "guarded": span_mask(units, GUARDS.spans(text)).astype(int).tolist(),
                "blank": (units.content_start >= units.end).astype(int).tolist(),
                "source": item["source"],
            }
        )
        if progress and (n + 1) % 50 == 0:
            rate = (n + 1) / (time.perf_counter() - started)
            print(f"scored {n + 1}/{len(corpus)} texts ({rate:.2f} texts/s)", file=sys.stderr)
    return out


def token_labels(record: dict[str, Any], label_ratio: float, label_guards: bool) -> list[int]:
    """Per-token keep labels of one teacher record (blank words: IGNORE_INDEX)."""
    scores = np.asarray(record["scores"], dtype=np.float64)
    guarded = np.asarray(record["guarded"], dtype=bool)
    blank = np.asarray(record["blank"], dtype=bool)
    words = word_labels("", scores, guarded & label_guards, label_ratio)
    unit_of = np.asarray(record["unit_of"], dtype=np.int64)
    labels = words[unit_of]
    labels[blank[unit_of]] = IGNORE_INDEX
    return labels.tolist()


# -- the student ---------------------------------------------------------------------------


def build_student(config: ClassifierConfig, target_model: Any, vocab_size: int) -> Any:
    """A small BERT token classifier whose embeddings start as a PCA of the target's."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(config.seed)
    bert = BertConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden,
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        intermediate_size=4 * config.hidden,
        max_position_embeddings=max(512, config.window + 2),
        num_labels=2,
        id2label={0: "drop", 1: "keep"},
        label2id={"drop": 0, "keep": 1},
        pad_token_id=0,
        type_vocab_size=1,
    )
    student = BertForTokenClassification(bert)
    weight = target_model.get_input_embeddings().weight.detach().float()  # (vocab, dim)
    centered = weight - weight.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centered, q=config.hidden, center=False)
    projected = centered @ v[:, : config.hidden]  # (vocab, hidden)
    projected = projected / projected.std() * student.config.initializer_range
    with torch.no_grad():
        rows = min(vocab_size, projected.shape[0])
        student.bert.embeddings.word_embeddings.weight[:rows] = projected[:rows]
    return student


def _rows(items: Sequence[dict[str, Any]], window: int) -> list[tuple[list[int], list[int]]]:
    rows = []
    for item in items:
        ids, labels = item["ids"], item["labels"]
        for begin in range(0, len(ids), window):
            chunk = ids[begin : begin + window]
            if len(chunk) >= 8:
                rows.append((chunk, labels[begin : begin + window]))
    return rows


def _batch(rows: Sequence[tuple[list[int], list[int]]]) -> dict[str, Any]:
    import torch

    width = max(len(r[0]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, (row_ids, row_labels) in enumerate(rows):
        ids[i, : len(row_ids)] = torch.tensor(row_ids)
        labels[i, : len(row_labels)] = torch.tensor(row_labels)
        mask[i, : len(row_ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_student(
    student: Any, train: Sequence[dict[str, Any]], config: ClassifierConfig, progress: bool = True
) -> dict[str, Any]:
    """Plain AdamW over windows of the labeled texts; returns the loss curve."""
    import torch

    rows = _rows(train, config.window)
    if not rows:
        raise InvalidInputError("the labeled corpus has no rows to train on")
    rng = random.Random(config.seed)
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total = max(1, int(steps_per_epoch * config.epochs))
    warmup = max(1, total // 20)
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.learning_rate, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))),
    )
    student.train()
    curve, step, started = [], 0, time.perf_counter()
    while step < total:
        order = list(range(len(rows)))
        rng.shuffle(order)
        for begin in range(0, len(order), config.batch_size):
            if step >= total:
                break
            batch = _batch([rows[i] for i in order[begin : begin + config.batch_size]])
            loss = student(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            step += 1
            if step % 20 == 0 or step == total:
                curve.append({"step": step, "loss": round(loss.item(), 4)})
                if progress:
                    print(f"step {step}/{total} loss {loss.item():.4f}", file=sys.stderr)
    student.eval()
    return {"steps": total, "curve": curve, "seconds": time.perf_counter() - started}


def agreement(student: Any, items: Sequence[dict[str, Any]], window: int) -> dict[str, float]:
    """On held-out texts: token accuracy against the labels, and how many of the
    teacher's keep labels fall in the student's top share of the same size."""
    import torch

    correct = total = overlap = wanted = positives = 0
    with torch.inference_mode():
        for item in items:
            ids, labels = item["ids"], np.asarray(item["labels"])
            probs = []
            for begin in range(0, len(ids), window):
                batch = _batch(
                    [(ids[begin : begin + window], item["labels"][begin : begin + window])]
                )
                logits = student(input_ids=batch["input_ids"]).logits[0]
                probs.append(logits.softmax(-1)[:, 1].numpy())
            p = np.concatenate(probs)
            valid = labels != IGNORE_INDEX
            correct += int(((p > 0.5) == (labels == 1))[valid].sum())
            total += int(valid.sum())
            positives += int((labels == 1)[valid].sum())
            keep = np.flatnonzero(valid & (labels == 1))
            order = np.flatnonzero(valid)[np.argsort(-p[valid])][: len(keep)]
            overlap += len(set(order.tolist()) & set(keep.tolist()))
            wanted += len(keep)
    keep_share = positives / total if total else 0.0
    return {
        "token_accuracy": correct / total if total else 0.0,
        "majority_baseline": max(keep_share, 1 - keep_share),
        "keep_recall_at_same_share": overlap / wanted if wanted else 0.0,
        "keep_recall_baseline": keep_share,
    }


def read_corpus(path: str | Path) -> list[dict[str, str]]:
    """A user's corpus: a JSONL file of ``{"text": ...}`` records or a plain text file
    (paragraph groups of it); bad lines are named by file and line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"cannot read corpus {path}: {exc}") from None
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise InvalidInputError(f"{path}:{n}: not a JSON object") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise InvalidInputError(f"{path}:{n}: expected an object with a string 'text'")
            out.append({"source": path.name, "text": record["text"]})
        return out
    return [{"source": path.name, "text": chunk} for chunk in prose_chunks(raw)]


def train_classifier(
    out_dir: str | Path,
    config: ClassifierConfig,
    *,
    corpus: Sequence[dict[str, str]] | None = None,
    allow_download: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Corpus → teacher labels (cached in ``out_dir``) → student → saved model + meta.

    ``corpus``: ``{source, text}`` records to use instead of the built-in corpus."""
    from tokenskip.models import load_model
    from tokenskip.scorers import SelfInfoScorer
    from tokenskip.tokens import TextTokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    teacher_file = out / "teacher.jsonl.gz"
    teacher_key: dict[str, Any] = {
        k: getattr(config, k) for k in ("teacher", "teacher_dtype", "target", "num_texts", "seed")
    }
    if corpus:
        teacher_key["corpus"] = hashlib.sha1(
            json.dumps([c["text"] for c in corpus]).encode()
        ).hexdigest()
    records = None
    if teacher_file.is_file():
        with gzip.open(teacher_file, "rt") as f:
            head = json.loads(f.readline())
            if head.get("config") == teacher_key:
                records = [json.loads(line) for line in f]
    target_loaded = load_model(config.target, allow_download=allow_download)
    target = TextTokenizer(target_loaded.tokenizer, config.target)
    if records is None:
        import torch

        texts = (
            list(corpus)[: config.num_texts]
            if corpus
            else collect_corpus(config.num_texts, config.seed)
        )
        teacher_loaded = load_model(
            config.teacher,
            dtype=getattr(torch, config.teacher_dtype),
            allow_download=allow_download,
        )
        teacher = SelfInfoScorer(
            teacher_loaded.model, TextTokenizer(teacher_loaded.tokenizer, config.teacher)
        )
        started = time.perf_counter()
        records = teacher_records(texts, teacher, target, progress)
        seconds = time.perf_counter() - started
        del teacher, teacher_loaded
        with gzip.open(teacher_file, "wt") as f:
            f.write(json.dumps({"config": teacher_key, "seconds": seconds}) + "\n")
            for item in records:
                f.write(json.dumps(item) + "\n")
    cached = [
        {
            "ids": r["ids"],
            "labels": token_labels(r, config.label_ratio, config.label_guards),
            "source": r["source"],
        }
        for r in records
    ]
    rng = random.Random(config.seed)
    order = list(range(len(cached)))
    rng.shuffle(order)
    num_held = max(1, int(len(cached) * config.held_out))
    held = [cached[i] for i in order[:num_held]]
    train = [cached[i] for i in order[num_held:]]
    student = build_student(config, target_loaded.model, len(target_loaded.tokenizer))
    del target_loaded
    summary = train_student(student, train, config, progress)
    summary["held_out"] = agreement(student, held, config.window)
    student.save_pretrained(out)
    target.hf.save_pretrained(out)
    sources: dict[str, int] = {}
    for item in cached:
        sources[item["source"]] = sources.get(item["source"], 0) + 1
    meta = {
        "kind": "tokenskip-token-classifier",
        "config": config.to_dict(),
        "num_texts": len(cached),
        "num_train_tokens": sum(len(i["ids"]) for i in train),
        "sources": sources,
        "keep_share": float(
            np.mean([np.mean([x for x in i["labels"] if x != IGNORE_INDEX] or [0]) for i in cached])
        ),
        "training": summary,
    }
    (out / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return meta
