"""Representations of instruction variants: inputs, last-token states, metrics with known answers, UMAP, extraction."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import pytest
import torch

from coinlib.core.params import validate
from coinlib.evaluate import represent
from coinlib.evaluate.represent import Representations
from coinlib.results.inputs import MissingInput, role_adapters

PROMPTS = {g: {"cola": [f"{g} zero: ", f"{g} one: "]} for g in represent.EVAL_GROUPS}


def test_instruction_variants_pick_the_index_of_every_group():
    got = represent.instruction_variants(PROMPTS, "cola", 1)
    assert list(got) == list(represent.EVAL_GROUPS) and got["semantic"] == "semantic one: "
    with pytest.raises(ValueError, match="represent_instruction is 2.*only 2"):
        represent.instruction_variants(PROMPTS, "cola", 2)
    with pytest.raises(ValueError, match="no 'clean' instructions for task 'sst2'"):
        represent.instruction_variants(PROMPTS, "sst2", 0)


def test_variant_inputs_one_row_per_group_and_instance():
    inst = pd.DataFrame({"instance_id": ["7", "9"], "content": ["A.", "B."], "label": [1, 0]})
    rows = represent.variant_inputs(inst, {"clean": "c: ", "checklist": "k: "}, lambda i, c: i + c)
    assert rows["text"].tolist() == ["c: A.", "c: B.", "k: A.", "k: B."]
    assert rows["group"].tolist() == ["clean", "clean", "checklist", "checklist"]


def test_last_token_states_match_unbatched_runs(tiny_model, smol_tokenizer):
    texts = ["short one", "a much longer input text with many more tokens in it", "mid length text"]
    batched = represent.last_token_states(tiny_model, smol_tokenizer, texts, batch_size=2)
    for i, text in enumerate(texts):
        enc = smol_tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            h = tiny_model.model(**enc).last_hidden_state[0, -1].numpy()
        np.testing.assert_allclose(batched[i], h, atol=1e-5)


def _reps(role_states: dict[str, dict[str, np.ndarray]]) -> Representations:
    meta, states = [], []
    for role, groups in role_states.items():
        for group, x in groups.items():
            meta += [{"role": role, "run": role, "group": group, "instance_id": str(i), "label": 0} for i in range(len(x))]
            states.append(x)
    return Representations(pd.DataFrame(meta), np.concatenate(states))


def test_clean_similarity_known_answers():
    rng = np.random.default_rng(0)
    clean = rng.normal(size=(20, 8))
    orth = clean.copy()
    orth[:, 0], orth[:, 1] = -clean[:, 1], clean[:, 0]  # rotate the first plane: cos < 1, deterministic
    reps = _reps({"m": {"clean": clean, "checklist": 3 * clean, "semantic": -clean}})
    got = represent.clean_similarity(reps).set_index("group")
    assert got.loc["checklist", "mean_cos"] == pytest.approx(1.0)
    assert got.loc["semantic", "mean_cos"] == pytest.approx(-1.0)
    assert (got["n_instances"] == 20).all()
    rotated = represent.clean_similarity(_reps({"m": {"clean": clean, "textfooler": orth}}))
    expected = np.mean(np.sum(clean[:, 2:] ** 2, axis=1) / np.sum(clean**2, axis=1))
    assert rotated["mean_cos"].iloc[0] == pytest.approx(expected)


def test_group_separation_high_for_clusters_low_for_overlap():
    rng = np.random.default_rng(1)
    centers = np.eye(8) * 10
    separate = {g: centers[i] + rng.normal(size=(30, 8)) for i, g in enumerate(["clean", "checklist", "semantic"])}
    mixed = {g: centers[0] + rng.normal(size=(30, 8)) for g in ["clean", "checklist", "semantic"]}
    got = represent.group_separation(_reps({"cit": separate, "coin": mixed})).set_index("role")["silhouette"]
    assert got["cit"] > 0.8 and abs(got["coin"]) < 0.1
    metrics = represent.representation_metrics(_reps({"cit": separate}))
    assert set(metrics["group"]) == {"checklist", "semantic"} and metrics["silhouette"].nunique() == 1


def test_umap_points_are_seeded():
    rng = np.random.default_rng(2)
    reps = _reps({"m": {"clean": rng.normal(size=(12, 6)), "semantic": rng.normal(size=(12, 6)) + 2}})
    a = represent.umap_points(reps, seed=3)
    b = represent.umap_points(reps, seed=3)
    assert a[["umap_x", "umap_y"]].notna().all().all() and len(a) == 24
    pd.testing.assert_frame_equal(a, b)


# ------------------------------------------------------------------------------------------ extraction
@pytest.fixture()
def tiny_runs(tmp_path, tiny_model, smol_tokenizer):
    """A local tiny model folder and two runs' LoRA adapters (non-zero, so they change the states)."""
    from peft import LoraConfig, get_peft_model

    model_dir = tmp_path / "tiny"
    tiny_model.save_pretrained(model_dir)
    smol_tokenizer.save_pretrained(model_dir)
    for seed, run in enumerate(["cit", "coin"]):
        torch.manual_seed(seed)
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
        get_peft_model(type(tiny_model).from_pretrained(model_dir), cfg).save_pretrained(tmp_path / "runs" / run / "adapter")
    return tmp_path


def _params(root, mirror, **analysis):
    return validate({"base": "smoke.yaml", "run": {"name": "main", "output_root": str(root / "runs"), "mirror": str(mirror)},
                     "model": {"name": str(root / "tiny")}, "analysis": {"represent_n": 4, **analysis}})


@functools.cache
def _cola_texts(mirror, index: int) -> tuple[str, ...]:
    """Each group's instruction ``index`` on cola's first 4 instances, in the paper format, group by group."""
    from coinlib.core.promptsets import load_prompt_set
    from coinlib.core.tasks import load_task

    prompts = load_prompt_set("coin_eval_prompts", mirror)
    contents = load_task("cola", 4, mirror)["content"]
    return tuple(prompts[g]["cola"][index] + c + "### Response:" for g in represent.EVAL_GROUPS for c in contents)


def _fresh_states(root, mirror, adapter, instruction_index: int = 0) -> np.ndarray:
    """Recomputed without extract(): one unpadded forward per input through the tiny model with ``adapter``
    merged in (None: base), final-norm state at the last token."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(root / "tiny")
    model = AutoModelForCausalLM.from_pretrained(root / "tiny")
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    with torch.no_grad():
        return np.stack([model.model(**tok([t], return_tensors="pt")).last_hidden_state[0, -1].numpy()
                         for t in _cola_texts(mirror, instruction_index)])


def test_extract_uses_each_runs_adapter(tiny_runs, mirror, monkeypatch):
    P = _params(tiny_runs, mirror, cit_run="cit", coin_run="coin")
    loads = []
    real_load = represent._load
    monkeypatch.setattr(represent, "_load", lambda P, adapter: loads.append(adapter) or real_load(P, adapter))
    folder = str(tiny_runs / "runs" / "coin" / "adapter")  # an adapter folder works as well as a run name
    reps = represent.extract(P, role_adapters(P, {"base": "base", "cit": "cit", "coin": "coin", "again": "cit",
                                                  "folder": folder}))
    assert reps.states.shape == (5 * 5 * 4, 64)  # roles x groups x instances, hidden size
    assert reps.meta.groupby("role", sort=False).size().to_dict() == {r: 20 for r in ["base", "cit", "coin", "again", "folder"]}
    cit, coin = reps.of("cit"), reps.of("coin")
    assert cit.meta["instance_id"].tolist() == coin.meta["instance_id"].tolist()
    # each role's states are its own model's, recomputed here one input at a time
    runs = tiny_runs / "runs"
    fresh = {run: _fresh_states(tiny_runs, mirror, None if run == "base" else runs / run / "adapter")
             for run in ("base", "cit", "coin")}
    for role, run in [("base", "base"), ("cit", "cit"), ("coin", "coin"), ("again", "cit"), ("folder", "coin")]:
        np.testing.assert_allclose(reps.of(role).states, fresh[run], atol=1e-4, err_msg=role)
    assert not np.allclose(cit.states, coin.states, atol=1e-3)  # different adapters, different states
    # a role naming a run already computed reuses it: one model load per distinct run (base, cit, coin, folder)
    assert len(loads) == 4 and loads[0] is None


def test_extract_follows_the_instruction_index(tiny_runs, mirror):
    P = _params(tiny_runs, mirror, cit_run="cit", coin_run="coin", represent_instruction=1)
    reps = represent.extract(P, role_adapters(P, {"cit": "cit"}))
    fresh = _fresh_states(tiny_runs, mirror, tiny_runs / "runs" / "cit" / "adapter", instruction_index=1)
    np.testing.assert_allclose(reps.states, fresh, atol=1e-4)
    first = _fresh_states(tiny_runs, mirror, tiny_runs / "runs" / "cit" / "adapter", instruction_index=0)
    assert not np.allclose(reps.states, first, atol=1e-3)  # another instruction: other states


def test_extract_without_adapter_says_to_train_first(tiny_runs, mirror):
    P = _params(tiny_runs, mirror, cit_run="cit", coin_run="missing")
    with pytest.raises(MissingInput, match=r"run 'missing'.*02_train\.ipynb.*run\.name is 'missing'"):
        represent.extract(P, role_adapters(P))
