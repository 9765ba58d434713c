"""The GPU recipe script, end to end on CPU with the embedded model and tiny sizes: model
files over in chunks and back, then collect → compress → train → evaluate at every γ."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.trainers.conftest import write_gsm8k

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_recipe.py"


def recipe(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def test_model_files_cross_in_chunks_and_come_back_identical(tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "model.safetensors").write_bytes(os.urandom(5000))
    (src / "sub" / "config.json").write_text('{"a": 1}')
    (src / "empty").write_bytes(b"")
    done = recipe("split", src, tmp_path / "chunks", "--chunk-mib", 0.001, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    folders = json.loads(done.stdout)["folders"]
    assert len(folders) >= 5  # ~1 KiB each
    assert all(sum(f.stat().st_size for f in Path(d).glob("*.part")) <= 1048 for d in folders)
    pool = tmp_path / "pool"
    pool.mkdir()
    for folder in folders:  # as the device machine receives them: one folder per call
        for f in Path(folder).iterdir():
            (pool / f.name).write_bytes(f.read_bytes())
    assert recipe("join", pool, tmp_path / "back", cwd=tmp_path).returncode == 0
    for f in src.rglob("*"):
        if f.is_file():
            assert (tmp_path / "back" / f.relative_to(src)).read_bytes() == f.read_bytes()
    next(pool.glob("*.part")).write_bytes(b"corrupt")
    bad = recipe("join", pool, tmp_path / "again", cwd=tmp_path)
    assert bad.returncode != 0 and "sha256" in bad.stderr


def test_the_recipe_runs_end_to_end_on_cpu(tmp_path):
    data = tmp_path / "gsm8k"
    data.mkdir()
    write_gsm8k(data / "train.jsonl")
    write_gsm8k(data / "test.jsonl")
    done = recipe(
        "run", "--model", "smollm2", "--out", tmp_path / "recipe", "--data", data,
        "--train-limit", 6, "--test-limit", 2, "--grid", "0.5", "--cot-source", "reference",
        "--scorer", "heuristic", "--max-new-tokens", 16, "--batch-size", 2,
        "--train-batch-size", 2, "--max-steps", 2, "--control-every", 1,
        "--control-questions", 2, "--no-progress", cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads((tmp_path / "recipe" / "recipe.json").read_text())
    assert stages["device"] == "cpu" and stages["train"]["training"]["steps"] == 2
    run = json.loads((tmp_path / "recipe" / "eval" / "run.json").read_text())
    methods = {(r["method"], r["ratio"]) for r in run["rows"]}
    assert {("tokenskip", 0.5), ("tokenskip", 1.0), ("original", 1.0)} <= methods
    checks = (tmp_path / "recipe" / "train" / "controllability.jsonl").read_text().splitlines()
    assert [json.loads(c)["step"] for c in checks] == [1, 2]
