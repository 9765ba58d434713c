"""The TokenSkip pipeline end to end on the embedded model: a tiny run, its artifacts, resume."""

import json
import time

import pytest
import torch
from transformers import TrainerCallback

from tests.trainers.conftest import write_gsm8k
from tokenskip.cli import main
from tokenskip.errors import InvalidInputError
from tokenskip.models import load_model
from tokenskip.runtime.engine import Engine, GenerationRequest
from tokenskip.runtime.runner import Runner
from tokenskip.trainers.sft import LoraSettings, TrainSettings, last_checkpoint
from tokenskip.trainers.tokenskip_run import TokenSkipConfig, read_adapter_meta, run_tokenskip


def tiny_config(tmp_path, **overrides):
    data = write_gsm8k(tmp_path / "train.jsonl")
    settings = dict(
        model="smollm2",
        out_dir=str(tmp_path / "run"),
        data=str(data),
        cot_source="reference",
        grid=(0.5, 0.7),
        scorer="heuristic",
        train=TrainSettings(
            lora=LoraSettings(r=4, alpha=32, dropout=0.0),
            learning_rate=5e-3,  # a few steps must visibly move the model
            max_steps=4,
            batch_size=2,
            save_steps=2,
            precision="fp32",
        ),
    )
    settings.update(overrides)
    return TokenSkipConfig(**settings)


class StopAt(TrainerCallback):
    """Simulates a crash right after the checkpoint at ``step``."""

    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated interruption")


def greedy(runner, adapter, prompt_ids, n=12):
    engine = Engine(runner)
    try:
        r = GenerationRequest(prompt_ids=prompt_ids, max_new_tokens=n, adapter=adapter)
        done = []
        r.on_done = done.append
        engine.submit(r)
        deadline = time.time() + 120
        while not done and time.time() < deadline:
            time.sleep(0.05)
        assert done, "generation did not finish"
        return r.output_ids
    finally:
        engine.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run, interrupted after its first checkpoint and resumed."""
    tmp = tmp_path_factory.mktemp("tokenskip")
    config = tiny_config(tmp)
    with pytest.raises(KeyboardInterrupt):
        run_tokenskip(config, progress=False, callbacks=[StopAt(2)])
    assert last_checkpoint(config.out_dir).name == "checkpoint-2"
    assert not (tmp / "run" / "adapter").exists()
    meta = run_tokenskip(tiny_config(tmp), progress=False, merge=True)
    return tmp, config, meta


def test_interrupted_run_resumes_from_its_checkpoint(trained):
    _, config, meta = trained
    t = meta["training"]
    assert t["resumed_from"].endswith("checkpoint-2")
    assert t["steps"] == config.train.max_steps
    assert t["examples"] == 6 and t["trainable_params"] > 0
    # packed rows per step sized to hold the batch's 2 examples; the head skips prompts
    assert t["rows_per_step"] == max(1, round(2 * t["rows"] / t["examples"]))
    assert t["completion_logits"] is True


def test_tokenskip_json_round_trips(trained):
    tmp, config, meta = trained
    on_disk = read_adapter_meta(tmp / "run" / "adapter")
    written = {k: v for k, v in meta.items() if k != "merged"}  # added after writing
    from tokenskip.provenance import portable_paths

    # what was returned, with its paths made portable as a written file has them
    assert on_disk == json.loads(json.dumps(portable_paths(written), ensure_ascii=False))
    assert on_disk["base_model"] == "smollm2" and on_disk["delimiter"] == "<|im_end|>"
    assert on_disk["grid"] == [0.5, 0.7] and on_disk["scorer"] == "heuristic"
    assert on_disk["data"]["build"]["examples"] == 6
    assert on_disk["git_commit"]
    runner = Runner(
        load_model("smollm2").model,
        load_model("smollm2").tokenizer,
        adapters={"ts": str(tmp / "run" / "adapter")},
    )
    assert runner.adapters["ts"].delimiter == on_disk["delimiter"]


def test_adapter_reloads_and_changes_greedy_output(trained, smol):
    tmp, _, _ = trained
    prompt = list(
        smol.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 3 times 4?<|im_end|>0.5<|im_end|>"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
    )
    fresh = load_model("smollm2")
    runner = Runner(fresh.model, fresh.tokenizer, adapters={"ts": str(tmp / "run" / "adapter")})
    base = greedy(runner, None, prompt)
    tuned = greedy(runner, "ts", prompt)
    assert tuned != base


def test_merged_model_carries_the_delimiter_and_matches_the_adapter(trained, smol):
    tmp, _, meta = trained
    merged_dir = tmp / "run" / "merged"
    assert meta["merged"] == str(merged_dir)
    merged = load_model(str(merged_dir))
    runner = Runner(merged.model, merged.tokenizer)
    assert runner.base_delimiter == "<|im_end|>"
    ids = torch.tensor([smol.tokenizer.encode("Three apples and four apples make")])
    fresh = load_model("smollm2")
    adapted = Runner(fresh.model, fresh.tokenizer, adapters={"ts": str(tmp / "run" / "adapter")})
    with torch.inference_mode():
        a = merged.model(ids).logits[0, -1]
        b = adapted.model(ids).logits[0, -1]
    assert torch.allclose(a, b, atol=1e-3)


def test_a_different_run_in_the_same_directory_is_refused(trained):
    tmp, _, _ = trained
    before = (tmp / "run" / "train.jsonl").read_text()
    with pytest.raises(InvalidInputError, match=r"different run \(differs in: grid \(\[0\.5"):
        run_tokenskip(tiny_config(tmp, grid=(0.6,)), progress=False)
    assert (tmp / "run" / "train.jsonl").read_text() == before


def test_a_foreign_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        run_tokenskip(tiny_config(tmp_path), progress=False)
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--grid", "0.5,1.5"], "--grid"),
        (["--grid", "0,0.5"], "--grid"),
        (["--grid", "half"], "--grid"),
        (["--lr", "-1"], "--lr"),
        (["--cot-source", "oracle"], "--cot-source"),
    ],
)
def test_cli_usage_errors_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "tokenskip", *args])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_refuses_a_bad_delimiter_before_any_work(tmp_path, capsys):
    data = write_gsm8k(tmp_path / "train.jsonl")
    code = main(
        [
            "train",
            "tokenskip",
            "--data",
            str(data),
            "--cot-source",
            "reference",
            "--delimiter",
            "\udcff",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ]
    )
    assert code == 2
    assert "delimiter" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_the_proxy_serves_the_trained_adapter_and_merged_model_with_the_ratio_knob(trained):
    import openai

    from tests.proxy.servers import serve
    from tokenskip.proxy.api.app import create_app
    from tokenskip.proxy.infra.config import Settings, parse_config

    tmp, _, _ = trained
    settings = Settings(ledger_url=f"sqlite:///{tmp / 'ledger.sqlite'}")
    config = parse_config(
        {
            "model_list": [
                {
                    "model_name": "ts-adapter",
                    "local": {"model": "smollm2", "adapter": str(tmp / "run" / "adapter")},
                },
                {"model_name": "ts-merged", "local": {"model": str(tmp / "run" / "merged")}},
                {"model_name": "plain", "local": {"model": "smollm2"}},
            ]
        },
        settings,
    )
    with serve(create_app(settings, config)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        for model, method in (
            ("ts-adapter", "tokenskip"),
            ("ts-merged", "tokenskip"),
            ("plain", "instruction"),
        ):
            reply = client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "What is 6*7?"}],
                max_tokens=4,
                extra_body={"tokenskip": {"cot_ratio": 0.5}},
            )
            assert reply.model_extra["tokenskip"]["cot_method"] == method, model


def test_the_evaluation_runs_the_trained_adapter_at_each_ratio(trained, tmp_path):
    from tests.trainers.conftest import PROBLEMS, write_gsm8k

    tmp, _, _ = trained
    data = write_gsm8k(tmp_path / "test.jsonl", problems=PROBLEMS[:2])
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "gsm8k",
            "--adapter",
            str(tmp / "run" / "adapter"),
            "--data",
            str(data),
            "--ratios",
            "1.0,0.5",
            "--methods",
            "original,tokenskip",
            "--max-new-tokens",
            "16",
            "--batch-size",
            "2",
            "--latency-samples",
            "0",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    run = json.loads((out / "run.json").read_text())
    assert {(r["method"], r["ratio"]) for r in run["rows"]} == {
        ("original", 1.0),
        ("tokenskip", 1.0),
        ("tokenskip", 0.5),
    }


def test_the_adapters_metadata_names_no_machine_path(trained):
    tmp, config, meta = trained
    text = (tmp / "run" / "adapter" / "tokenskip.json").read_text()
    assert str(tmp) not in text and "/tmp/" not in text
    adapter = json.loads(text)["training"]["adapter"]
    assert not adapter.startswith("/") and adapter.endswith("adapter")  # portable, still there


def test_controllability_is_logged_during_training_and_can_stop_the_run(tmp_path):
    """The control check answers held-out questions at each γ with the model being trained
    and logs accuracy, CoT tokens and the achieved ratio per check."""
    from tokenskip.trainers.control import CONTROL_FILE, ControlSettings

    (tmp_path / "data").mkdir()
    test = write_gsm8k(tmp_path / "data" / "test.jsonl")
    control = ControlSettings(every=2, questions=2, gammas=(1.0, 0.5), max_new_tokens=12,
                              batch_size=2, data=str(test.parent), tolerance=10.0,
                              stop_when_controllable=True)  # fmt: skip
    meta = run_tokenskip(tiny_config(tmp_path), progress=False, control=control)
    rows = [json.loads(line) for line in (tmp_path / "run" / CONTROL_FILE).read_text().splitlines()]
    assert [r["step"] for r in rows] == [2]  # stopped at the first controllable check
    assert meta["training"]["steps"] == 2
    by = rows[0]["by_gamma"]
    assert set(by) == {"1", "0.5"} and by["1"]["ratio"] == 1.0
    assert all(0 < r["cot_tokens"] <= 12 and 0 <= r["accuracy"] <= 1 for r in by.values())
    assert by["0.5"]["ratio"] == round(by["0.5"]["cot_tokens"] / by["1"]["cot_tokens"], 4)


def test_control_settings_refuse_a_list_without_the_reference():
    from tokenskip.trainers.control import ControlSettings

    with pytest.raises(InvalidInputError, match="1.0"):
        ControlSettings(gammas=(0.9, 0.5))
