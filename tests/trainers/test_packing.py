"""Sequence packing in the LoRA trainer: rows hold whole examples, and the model sees each
example exactly as it would alone (the real embedded model, logits compared)."""

import pytest
import torch

from tokenskip.errors import InvalidInputError
from tokenskip.trainers.sft import (
    IGNORE_INDEX,
    CompletionHead,
    PackedCollator,
    PairCollator,
    TrainSettings,
    completion_loss,
    next_token_has_loss,
    pack,
    tokenize_pair,
)


def example(n, start=1):
    ids = list(range(start, start + n))
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * (n // 2) + ids[n // 2 :]}


def test_rows_hold_whole_examples_within_capacity():
    examples = [example(n, start=100 * i) for i, n in enumerate([5, 9, 3, 7, 2, 8, 4])]
    rows = pack(examples, 10)
    assert all(len(r["input_ids"]) <= 10 for r in rows)
    assert len(rows) < len(examples)
    # every example appears once, whole, with its positions restarting at 0
    found = []
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0] + [len(r["input_ids"])]
        for a, b in zip(starts, starts[1:]):
            found.append(r["input_ids"][a:b])
            assert r["position_ids"][a:b] == list(range(b - a))
            assert r["labels"][a] == IGNORE_INDEX  # no target across an example boundary
    assert sorted(found) == sorted(e["input_ids"] for e in examples)


def test_an_example_longer_than_a_row_is_refused_not_split():
    with pytest.raises(InvalidInputError, match="would split it"):
        pack([example(4), example(12)], 10)


def test_the_collator_pads_with_a_segment_of_its_own():
    rows = pack([example(3), example(2), example(6)], 6)
    batch = PackedCollator(pad_id=0)(rows)
    assert "attention_mask" not in batch
    width = batch["input_ids"].shape[1]
    for r, row in enumerate(rows):
        n = len(row["input_ids"])
        assert batch["position_ids"][r, n:].tolist() == list(range(width - n))
        assert (batch["labels"][r, n:] == IGNORE_INDEX).all()


def test_a_packed_row_gives_each_example_its_own_logits(smol):
    """Block-diagonal attention, measured: logits of examples packed in one row (plus
    padding) equal those of each example run alone."""
    tok, model = smol.tokenizer, smol.model
    texts = [
        ("Question: 2+3?\nAnswer:", " 2+3 = 5. #### 5"),
        ("Question: Tom has 4 apples and eats one. How many are left?\nAnswer:", " 3. #### 3"),
        ("Q: 9*9?\nA:", " 81 #### 81"),
    ]
    examples = [tokenize_pair(tok, p, c, 512) for p, c in texts]
    rows = pack(examples, sum(len(e["input_ids"]) for e in examples))
    assert len(rows) == 1
    batch = PackedCollator(pad_id=tok.eos_token_id)(rows + [{"input_ids": [1, 2],
                                                            "labels": [IGNORE_INDEX] * 2,
                                                            "position_ids": [0, 1]}])  # fmt: skip
    assert batch["input_ids"].shape[0] == 2  # the second row pads: a segment of its own
    with torch.no_grad():
        packed = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits  # training runs without a cache
        ids, offset = rows[0]["input_ids"], 0
        for n in (
            len(e["input_ids"]) for e in sorted(examples, key=lambda e: -len(e["input_ids"]))
        ):
            alone = model(input_ids=torch.tensor([ids[offset : offset + n]])).logits[0]
            assert torch.allclose(packed[0, offset : offset + n], alone, atol=1e-4), offset
            offset += n


def test_packed_and_padded_batches_have_the_same_loss(smol):
    """The loss over the same examples is the same packed or padded (mean over completion
    tokens), so packing changes the speed, not the objective."""
    tok, model = smol.tokenizer, smol.model
    examples = [tokenize_pair(tok, f"Q: {a}+{a}?\nA:", f" {2 * a} #### {2 * a}", 512)
                for a in (3, 14, 159)]  # fmt: skip
    with torch.no_grad():
        padded = model(**PairCollator(tok.eos_token_id)(examples)).loss
        rows = pack(examples, 64)
        packed = model(**PackedCollator(tok.eos_token_id)(rows), use_cache=False).loss
    assert len(rows) == 1
    assert abs(float(padded) - float(packed)) < 1e-4


def test_packing_is_on_by_default_and_can_be_turned_off():
    assert TrainSettings().packing is True
    assert TrainSettings(packing=False).packing is False


def test_the_head_at_completion_positions_only_gives_the_same_loss_and_gradients(smol):
    """CompletionHead skips the LM head at prompt positions; the loss and the gradients it
    sends into the model are those of the model's own full-logits loss, padded or packed."""
    tok, model = smol.tokenizer, smol.model
    examples = [tokenize_pair(tok, f"Q: what is {a} times 3?\nA:", f" {3 * a} #### {3 * a}", 512)
                for a in (7, 21, 305)]  # fmt: skip
    weight = model.model.layers[2].self_attn.q_proj.weight
    was = weight.requires_grad
    weight.requires_grad_(True)
    try:
        for batch in (PairCollator(tok.eos_token_id)(examples),
                      PackedCollator(tok.eos_token_id)(pack(examples, 64))):  # fmt: skip
            full = model(**batch, use_cache=False).loss
            (grad_full,) = torch.autograd.grad(full, weight)
            head = CompletionHead(model)
            try:
                head.keep = next_token_has_loss(batch["labels"])
                inputs = {k: v for k, v in batch.items() if k != "labels"}
                out = model(**inputs, use_cache=False)
                kept = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
                assert tuple(out.logits.shape[:2]) == (1, kept)
                assert kept < batch["input_ids"].numel() / 2  # the prompt positions were skipped
                selected = completion_loss(out, batch["labels"])
            finally:
                head.remove()
            (grad_selected,) = torch.autograd.grad(selected, weight)
            assert abs(float(full) - float(selected)) < 1e-5
            assert torch.allclose(grad_full, grad_selected, rtol=1e-4, atol=1e-7)
            after = model(**inputs, use_cache=False).logits  # the hook is gone
            assert after.shape[:2] == batch["input_ids"].shape
    finally:
        weight.requires_grad_(was)


def test_the_completion_loss_falls_back_to_full_logits_and_counts_the_whole_step():
    """Full batch × length logits are shifted as the model's own loss shifts them, and a
    token count for the whole accumulated step replaces the batch's own."""
    logits = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 3, 4, 5], [IGNORE_INDEX, 1, 2, 3, 4]])
    mean = completion_loss({"logits": logits}, labels)
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX
    )
    assert torch.allclose(mean, expected)
    assert torch.allclose(completion_loss({"logits": logits}, labels, 14), mean * 7 / 14)


def test_the_head_and_packing_defaults_and_cli_switches():
    import argparse

    from tokenskip.cli.train import add_train_arguments, train_settings

    assert TrainSettings().completion_logits is True
    p = argparse.ArgumentParser()
    add_train_arguments(p)
    args = p.parse_args(["--full-logits", "--no-packing"])
    s = train_settings(args)
    assert s.completion_logits is False and s.packing is False
