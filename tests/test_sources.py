"""External artifacts: the mirror and the online origin give the same rows; failures say how to fix them."""

from __future__ import annotations

import json

import pytest

from coinlib.core import sources
from coinlib.core.sources import (
    DATASETS,
    GitHubFile,
    SourceUnavailable,
    load_json_artifact,
    load_split,
    parse_python_literal,
    resolve_mirror,
)


def test_every_dataset_is_pinned_to_a_revision():
    for name, ds in DATASETS.items():
        assert ds.revision, name
        assert len(ds.revision) == 40 or ds.revision.startswith("refs/convert/"), (name, ds.revision)


def test_mirror_split_has_hub_columns_and_rows(mirror):
    ds = load_split("glue", "sst2", "validation", mirror)
    assert ds.column_names == ["sentence", "label", "idx"]
    assert len(ds) == 872
    assert ds[0]["label"] == 1 and ds[0]["sentence"].startswith("it 's a charming")


def test_hub_id_is_accepted_as_dataset_name(mirror):
    assert len(load_split("nyu-mll/glue", "rte", "validation", mirror)) == 277


def test_mirror_and_hub_give_the_same_rows(mirror, monkeypatch, tmp_path):
    """The online path returns exactly what datasets.load_dataset yields; fake the hub with the mirror's rows."""
    import datasets

    calls = {}

    def fake_load_dataset(hub_id, config, split, revision):
        calls.update(hub_id=hub_id, config=config, split=split, revision=revision)
        rows = sources.read_jsonl(DATASETS["glue"].mirror_path(mirror, config, split))
        return datasets.Dataset.from_list(rows)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    online = load_split("glue", "wnli", "validation", mirror="hub")
    offline = load_split("glue", "wnli", "validation", mirror=mirror)
    assert calls == {"hub_id": "nyu-mll/glue", "config": "wnli", "split": "validation",
                     "revision": DATASETS["glue"].revision}
    assert online.to_list() == offline.to_list()


def test_no_mirror_and_offline_hub_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SourceUnavailable) as err:
        load_split("glue", "sst2", "validation", mirror="hub")
    msg = str(err.value)
    assert "nyu-mll/glue" in msg and "COIN_DATA_MIRROR" in msg and "HF_HUB_OFFLINE" in msg


def test_split_missing_from_mirror_falls_back_to_hub_and_reports_both(mirror, monkeypatch):
    import datasets

    def broken(*a, **k):
        raise ConnectionError("hub unreachable")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(datasets, "load_dataset", broken)
    with pytest.raises(SourceUnavailable) as err:
        load_split("glue", "qqp", "train", mirror)
    msg = str(err.value)
    assert "no mirror file at" in msg and "hub unreachable" in msg


def test_unknown_dataset_and_bad_mirror_root(tmp_path):
    with pytest.raises(KeyError, match="unknown dataset"):
        load_split("not-a-dataset", None, "train")
    with pytest.raises(SourceUnavailable, match="is not a folder"):
        resolve_mirror(tmp_path / "missing")


def test_mirror_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv(sources.MIRROR_ENV, str(tmp_path))
    assert resolve_mirror("auto") == tmp_path
    assert resolve_mirror("hub") is None and resolve_mirror(None) is None
    monkeypatch.delenv(sources.MIRROR_ENV)
    monkeypatch.setattr(sources, "SIBLING_MIRROR", tmp_path / "absent")
    assert resolve_mirror("auto") is None


def test_empty_mirror_file_is_an_error(tmp_path):
    path = DATASETS["glue"].mirror_path(tmp_path, "sst2", "validation")
    path.parent.mkdir(parents=True)
    path.write_text("")
    with pytest.raises(SourceUnavailable, match="is empty"):
        load_split("glue", "sst2", "validation", tmp_path)


def test_json_artifact_from_mirror(mirror):
    prompts = load_json_artifact("coin_eval_prompts", mirror)
    assert set(prompts) >= {"clean", "deepwordbug", "textfooler", "checklist", "semantic"}
    assert len(prompts["clean"]["sst2"]) == 6


def test_json_artifact_online_parses_python_without_executing(monkeypatch, tmp_path):
    src = "import os\nos.system('echo pwned')\nPATTERNS = {'rte': [('{premise}', '{answer}')]}\n"
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(sources, "fetch_text", lambda origin: src)
    out = load_json_artifact("flan_templates", mirror="hub")
    assert out["origin"] == {"rte": [("{premise}", "{answer}")]}
    assert out["source"].startswith("google-research/FLAN@e9e4ec6e2701")


def test_json_artifact_unreachable_says_how_to_fix(monkeypatch):
    def offline(origin):
        raise OSError("network is unreachable")

    monkeypatch.setattr(sources, "fetch_text", offline)
    with pytest.raises(SourceUnavailable, match="COIN_DATA_MIRROR"):
        load_json_artifact("coin_eval_prompts", mirror="hub")


def test_fetch_text_uses_cache_and_writes_atomically(monkeypatch, tmp_path):
    monkeypatch.setenv(sources.CACHE_ENV, str(tmp_path))
    origin = GitHubFile("o/r", "a" * 40, "x/y.py", "X")

    class Resp:
        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return b"X = [1, 2]\n"

    opened = []
    monkeypatch.setattr(sources.urllib.request, "urlopen", lambda url, timeout: opened.append(url) or Resp())
    assert sources.fetch_text(origin) == "X = [1, 2]\n"
    assert sources.fetch_text(origin) == "X = [1, 2]\n"
    assert opened == [origin.url]  # second call served from the cache
    assert not list(tmp_path.rglob("*.tmp"))


def test_parse_python_literal_rejects_non_literals():
    assert parse_python_literal("A: dict = {'k': (1, 2)}", "A") == {"k": (1, 2)}
    with pytest.raises(ValueError):
        parse_python_literal("A = __import__('os').getcwd()", "A")
    with pytest.raises(SourceUnavailable, match="no literal assignment"):
        parse_python_literal("B = 1", "A")


def test_mirror_manifest_rows_match_files(mirror):
    """The mirror's own manifest agrees with what the loader reads (guards against a stale mirror)."""
    manifest = (mirror / "MANIFEST.tsv").read_text().splitlines()[1:]
    for line in manifest:
        path, rows = line.split("\t")[:2]
        if path.startswith("hf/") and path.endswith(".jsonl") and "nyu-mll__glue" in path:
            assert sum(1 for _ in open(mirror / path)) == int(rows), path
    assert json.loads((mirror / "flan" / "templates_v1.json").read_text())["tasks"]
