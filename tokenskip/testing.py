"""Tiny models built from configs, for tests and benchmarks. Nothing here downloads anything.

The weights are random: these models exercise code paths (shapes, windows, tokenizer
mismatch, loading from a directory), never the quality of a score.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def make_wordpiece_tokenizer(corpus: Iterable[str], vocab_size: int = 400) -> Any:
    """A BERT-style fast tokenizer over ``corpus`` (lower-cased WordPiece, [CLS]/[SEP]).

    The vocabulary is built deterministically (every character, then the most frequent words,
    ties broken alphabetically), so the same corpus gives the same ids in every process;
    the tokenizers trainer breaks frequency ties differently from run to run.
    """
    import re
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    words: Counter[str] = Counter()
    for text in corpus:
        words.update(re.findall(r"\w+|[^\w\s]", normalizer.normalize_str(text)))
    chars = sorted({ch for word in words for ch in word})
    vocab_list = specials + chars + ["##" + ch for ch in chars]
    for word, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab_list) >= vocab_size:
            break
        if len(word) > 1:
            vocab_list.append(word)
    tok = Tokenizer(
        models.WordPiece(vocab={t: i for i, t in enumerate(vocab_list)}, unk_token="[UNK]")
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def make_token_classifier(vocab_size: int, seed: int = 0, max_positions: int = 128) -> Any:
    """A 2-layer BERT token classifier (keep/drop) with random weights."""
    from transformers import BertConfig, BertForTokenClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=max_positions,
        num_labels=2,
    )
    return BertForTokenClassification(config).eval()


def make_causal_lm(vocab_size: int, seed: int = 0, max_positions: int = 64) -> Any:
    """A 2-layer Llama with a short context window and random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
    )
    return LlamaForCausalLM(config).eval()
