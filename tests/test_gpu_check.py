"""benchmarks/gpu_check.py --cpu-smoke: the GPU check's code runs on CPU, writes its report, and its checks pass."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SECTIONS = ["smollm2", "runner", "train_fp16", "train_nf4_gc", "train_bf16", "train_nf4", "train_smol_fp32",
            "train_smol_bf16", "eval_7b"]
TRAINED = ("nf4_gc", "bf16", "nf4", "smol_fp32", "smol_bf16")


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(gpu_check, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    assert gpu_check.main([str(out), "--cpu-smoke", "--budget", "900"]) == 0
    return out, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_cpu_smoke_runs_every_section(smoke):
    _, doc, _ = smoke
    assert set(doc) == {"meta", "sections", "checks"}
    assert list(doc["sections"]) == SECTIONS
    status = {k: v["status"] for k, v in doc["sections"].items()}
    assert status == {**{k: "ok" for k in SECTIONS}, "train_fp16": "skipped"}, doc["sections"]
    assert "needs CUDA" in doc["sections"]["train_fp16"]["reason"]
    assert doc["meta"]["cpu_smoke"] is True and doc["meta"]["versions"]["torch"]
    assert doc["meta"]["recipe"]["epoch_steps"] == 781  # (52,002 - 2,000 held out) // 64


def test_cpu_smoke_equality_and_path_checks_pass(smoke):
    _, doc, _ = smoke
    expected = {"smollm2_generate_equals_one_at_a_time", "smollm2_rank_equals_separate_scoring",
                "runner_two_shards_merged_equal_direct", "runner_model_on_expected_device"}
    for v in TRAINED:
        expected.add(f"train_{v}_coin_and_cit_steps_finite")
        if v.startswith("nf4"):
            expected.add(f"train_{v}_4bit_linear_layers")
        if v == "nf4_gc":
            expected.add(f"train_{v}_gradient_checkpointing_on")
    assert set(doc["checks"]) == expected
    assert all(doc["checks"].values()), doc["checks"]
    s = doc["sections"]
    assert s["smollm2"]["generate_equal"] == "8/8" and s["smollm2"]["rank_equal"] == "8/8"  # 2 tasks x 4 instances
    assert s["runner"]["merged_equal_direct"] == "16/16"  # 2 tasks x 2 instructions x 4 instances
    assert s["runner"]["devices"] == ["cpu", "cpu"]  # one model load per shard, on the check's device
    assert s["train_nf4"]["linear4bit_modules"] == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)


def test_projections_follow_the_recipe_arithmetic(smoke):
    _, doc, _ = smoke
    for v in TRAINED:
        rec = doc["sections"][f"train_{v}"]
        for mode, rows in (("COIN", 6), ("CIT", 4)):  # 2 pairs x (original, positive[, negative])
            r = rec[mode]
            assert r["sequences_per_micro_step"] == rows
            assert r["s_per_step_b64"] == pytest.approx(r["s_per_micro_step"] * 32, abs=0.01)  # 64 / 2 pairs
            assert r["timed_steps"] == 3  # the warm-up step is left out
            lo, hi = r["s_per_step_b64_range"]
            assert lo - 0.01 <= r["s_per_step_b64"] <= hi + 0.01  # the median lies inside the timed range
            assert r["epoch_h"] == pytest.approx(r["s_per_step_b64"] * 781 / 3600, abs=0.01)
            kv = 64 // 4 * (4 if v[0] == "n" or v == "bf16" else 2)  # tiny7b: 4 kv heads; tinysmol: 2 of 16 dims
            # layers x (q and o: r x (hidden + hidden); k and v: r x (hidden + kv width))
            assert r["trainable_params"] == 2 * 16 * (2 * (64 + 64) + 2 * (64 + kv))
        sweep = (6 * rec["COIN"]["s_per_step_b64"] + rec["CIT"]["s_per_step_b64"]) * 781 / 3600
        assert rec["sweep_h"] == pytest.approx(sweep, abs=0.1)


def test_markdown_has_a_row_per_variant_and_mode(smoke):
    _, doc, md = smoke
    assert md.startswith("# GPU check (CPU smoke)")
    for v in ("fp16",) + TRAINED:
        for mode in ("COIN", "CIT"):
            assert f"| {v} | {mode} |" in md
    assert all(f"- {k}: PASS" in md for k in doc["checks"])


def test_a_failing_section_is_recorded_and_the_rest_runs(gpu_check, tmp_path):
    # the runner needs the model that the smollm2 section saves: alone, it fails; eval_7b still runs after it
    assert gpu_check.main([str(tmp_path), "--cpu-smoke", "--budget", "900", "--only", "runner", "eval_7b"]) == 0
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["sections"]["runner"]["status"] == "error"
    assert "needs the smollm2 section" in doc["sections"]["runner"]["error"]
    assert doc["sections"]["eval_7b"]["status"] == "ok" and doc["sections"]["eval_7b"]["instances_per_s"]["rank_b16"] > 0
