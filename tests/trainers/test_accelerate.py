"""Training runs unchanged under ``accelerate launch``: two CPU processes (gloo) train one
tiny TokenSkip LoRA and write an adapter identical in format to the one-process run's.

accelerate 1.16's ``--cpu`` flag picks its one-process launcher whatever ``--num_processes``
says (checked: WORLD_SIZE is unset and the Trainer sees one process), so two CPU processes
are launched as ``accelerate launch --multi_gpu --num_processes 2``: torch's distributed
launcher starts both, and the Trainer (``use_cpu`` on a machine without CUDA) joins them over
gloo. The test checks the world size the Trainer saw, so a launch that silently ran one
process would fail it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from tests.trainers.conftest import write_gsm8k

REPO = Path(__file__).resolve().parents[2]
ARGS = [
    "train", "tokenskip", "--cot-source", "reference", "--grid", "0.5,0.7",
    "--scorer", "heuristic", "--max-steps", "2", "--batch-size", "1", "--lora-r", "4",
    "--precision", "fp32", "--save-steps", "2", "--no-progress",
]  # fmt: skip


def train(launcher: list[str], data: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [*launcher, "-m", "tokenskip.cli", *ARGS, "--data", str(data), "--out", str(out)]
    done = subprocess.run(cmd, env=env, cwd=out.parent, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "adapter" / "tokenskip.json").read_text())


def tensors(adapter: Path) -> dict[str, tuple]:
    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as f:
        return {k: (tuple(f.get_tensor(k).shape), str(f.get_tensor(k).dtype)) for k in f.keys()}  # noqa: SIM118 - safe_open is no dict


@pytest.mark.skipif(
    shutil.which("accelerate") is None
    and not (Path(sys.executable).parent / "accelerate").exists(),
    reason="accelerate is not installed",
)
def test_two_process_accelerate_launch_writes_the_same_adapter_format(tmp_path, smol):
    data = write_gsm8k(tmp_path / "train.jsonl")
    accelerate = str(Path(sys.executable).parent / "accelerate")
    one = train([sys.executable], data, tmp_path / "one")
    two = train(
        [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no"],
        data,
        tmp_path / "two",
    )  # fmt: skip
    assert one["training"]["world_size"] == 1
    assert two["training"]["world_size"] == 2 and two["training"]["distributed"] == "distributed"
    a, b = tmp_path / "one" / "adapter", tmp_path / "two" / "adapter"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    config_a, config_b = (json.loads((d / "adapter_config.json").read_text()) for d in (a, b))
    for config in (config_a, config_b):  # peft writes the resolved set in hash order
        config["target_modules"] = sorted(config["target_modules"])
    assert config_a == config_b
    assert tensors(a) == tensors(b) and len(tensors(a)) > 0
    assert one["delimiter"] == two["delimiter"] and one["grid"] == two["grid"]

    from peft import PeftModel

    from tokenskip.models import load_model

    base = load_model("smollm2").model
    loaded = PeftModel.from_pretrained(base, str(b))
    assert any("lora_A" in name for name, _ in loaded.named_parameters())
