"""Early-exit training: the LayerSkip loss, the data, bad settings, and a tiny run that lowers
an exit layer's loss on what it trained on."""

import json

import pytest
import torch
from peft import PeftModel

from tests.trainers.conftest import write_gsm8k
from tokenskip.cli import main
from tokenskip.errors import InvalidInputError
from tokenskip.models import load_model
from tokenskip.trainers.cot_data import read_jsonl
from tokenskip.trainers.early_exit import (
    EarlyExitTrainConfig,
    build_examples,
    early_exit_loss,
    exit_weights,
    run_early_exit,
)
from tokenskip.trainers.sft import (
    LoraSettings,
    PairCollator,
    TrainSettings,
    read_pairs,
    tokenize_pair,
)


def config(tmp_path, **overrides):
    settings = dict(
        model="smollm2",
        out_dir=str(tmp_path / "run"),
        data=str(write_gsm8k(tmp_path / "train.jsonl")),
        layers=(8, 16),
        train=TrainSettings(
            lora=LoraSettings(r=8, alpha=32, dropout=0.0),
            learning_rate=5e-3,
            max_steps=6,
            batch_size=3,
            save_steps=6,
            precision="fp32",
        ),
    )
    settings.update(overrides)
    return EarlyExitTrainConfig(**settings)


def batch_of(tokenizer, path):
    pairs = read_pairs(path)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return PairCollator(pad)(
        [tokenize_pair(tokenizer, p["prompt"], p["completion"], 512) for p in pairs]
    )


def exit_ce(model, batch, layer):
    """The completion loss of the exit after ``layer`` alone."""
    with torch.no_grad():
        out = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
        )
        decoder, head = model.get_decoder(), model.get_output_embeddings()
        logits = head(decoder.norm(out.hidden_states[layer + 1]))[:, :-1]
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        return float(torch.nn.functional.cross_entropy(logits[keep], targets[keep]))


def test_deeper_exits_weigh_more_and_weights_sum_to_one():
    w = exit_weights((4, 9, 19))
    assert w == sorted(w) and abs(sum(w) - 1) < 1e-9 and w[2] == pytest.approx(20 / 35)


def test_examples_are_the_zero_shot_prompt_and_the_stripped_reference(tmp_path, smol):
    cfg = config(tmp_path)
    (tmp_path / "run").mkdir()
    stats = build_examples(cfg, smol.tokenizer)
    rows = list(read_jsonl(tmp_path / "run" / "train.jsonl"))
    assert stats["examples"] == len(rows) == 6
    first = rows[0]
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    assert "Tom has 3 apples" in first["prompt"]
    assert first["completion"].startswith("Tom starts with 3 apples.")
    assert "<<" not in first["completion"] and "#### 7" in first["completion"]


def test_the_loss_is_the_final_loss_plus_the_weighted_exit_losses(tmp_path, smol):
    cfg = config(tmp_path)
    (tmp_path / "run").mkdir()
    build_examples(cfg, smol.tokenizer)
    batch = batch_of(smol.tokenizer, tmp_path / "run" / "train.jsonl")
    model = smol.model
    with torch.no_grad():
        got = float(early_exit_loss((8, 16), 0.5)(model, batch))
        final = float(model(**batch).loss)  # transformers' own shifted completion loss
    w8, w16 = exit_weights((8, 16))
    want = final + 0.5 * (w8 * exit_ce(model, batch, 8) + w16 * exit_ce(model, batch, 16))
    assert got == pytest.approx(want, rel=1e-4)


def test_a_tiny_run_lowers_the_exit_loss_and_writes_its_metadata(tmp_path, smol):
    meta = run_early_exit(config(tmp_path), progress=False)
    adapter = tmp_path / "run" / "adapter"
    on_disk = json.loads((adapter / "early_exit.json").read_text())
    assert on_disk["layers"] == [8, 16] and on_disk["training"]["steps"] == 6
    assert meta["format"] == "tokenskip-early-exit/1"
    batch = batch_of(smol.tokenizer, tmp_path / "run" / "train.jsonl")
    before = exit_ce(smol.model, batch, 8)
    tuned = PeftModel.from_pretrained(load_model("smollm2").model, str(adapter))
    after = exit_ce(tuned, batch, 8)
    assert after < before - 0.5, (before, after)


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(InvalidInputError, match="exit_scale"):
        config(tmp_path, exit_scale=0)
    with pytest.raises(InvalidInputError, match="below the last layer"):
        run_early_exit(config(tmp_path, layers=(8, 29)), progress=False)
    assert not (tmp_path / "run").exists()  # refused before any work


@pytest.mark.parametrize("layers", ["a,b", "-1,4", ""])
def test_cli_rejects_bad_layers_with_exit_2(layers, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "early-exit", f"--layers={layers}"])
    assert exc.value.code == 2
    assert "expected layer indices" in capsys.readouterr().err
