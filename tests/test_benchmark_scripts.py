"""The benchmark scripts still run (tiny sizes) and write the JSON they promise."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pair_math_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "pair_math.json"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "pair_math.py"), "--device", "cpu", "--sizes", "20",
         "--dim", "8", "--repeats", "1", "--warmup", "0", "--out", str(out)],
        check=True, capture_output=True, text=True, cwd=ROOT,
    )
    data = json.loads(out.read_text())
    impls = {row["impl"] for row in data["rows"]}
    assert impls == {"dmltune", "loop", "pml"}
    assert all(row["ms"] > 0 for row in data["rows"])
    cases = {row["case"] for row in data["rows"] if row["impl"] == "dmltune"}
    assert {"at_asms + soft_contrastive", "dsml + binomial*", "asms + triplet*"} <= cases


def run_script(name, *args):
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args], check=True, capture_output=True,
                   text=True, cwd=ROOT)


def test_eval_benchmark_runs(tmp_path):
    out = tmp_path / "eval.json"
    run_script("eval.py", "--device", "cpu", "--n", "300", "--dim", "16", "--ks", "1", "10", "--out", str(out))
    whats = [row["what"] for row in json.loads(out.read_text())["rows"]]
    assert "full evaluation" in whats and any("faiss" in w for w in whats)


def test_data_benchmark_runs(tmp_path):
    out = tmp_path / "data.json"
    run_script("data.py", "--device", "cpu", "--images", "12", "--batch-size", "10", "--batches", "2",
               "--workers", "0", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 4 and all(row["img_per_s"] > 0 for row in rows)


def test_train_step_benchmark_runs(tmp_path):
    out = tmp_path / "train_step.json"
    run_script("train_step.py", "--device", "cpu", "--batch-size", "10", "--dim", "8", "--steps", "1",
               "--warmup", "1", "--rounds", "1", "--out", str(out))
    rows = json.loads(out.read_text())["rows"]
    assert [r["what"] for r in rows] == ["plain step", "meta-λ, head look-ahead", "meta-λ, full look-ahead"]
    assert rows[0]["ratio_to_plain"] == 1.0
