"""coinlib.core.fileio: files and folders appear whole or not at all."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from coinlib.core.fileio import DuplicateKeyError, atomic_folder, atomic_write_text, load_yaml


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_atomic_write_text_replaces_whole(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "x.txt", "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two" and _leftovers(path.parent) == []


def test_atomic_folder_creates_and_replaces(tmp_path):
    target = tmp_path / "out"
    atomic_folder(target, lambda tmp: (tmp / "a.txt").write_text("1"))
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]
    atomic_folder(target, lambda tmp: (tmp / "b.txt").write_text("2"))  # the previous folder goes, not merged
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert _leftovers(tmp_path) == []


def test_atomic_folder_keeps_the_previous_folder_when_filling_fails(tmp_path):
    target = tmp_path / "out"
    atomic_folder(target, lambda tmp: (tmp / "a.txt").write_text("1"))

    def broken(tmp):
        (tmp / "half.txt").write_text("torn")
        raise RuntimeError("killed while writing")

    with pytest.raises(RuntimeError):
        atomic_folder(target, broken)
    assert (target / "a.txt").read_text() == "1" and not (target / "half.txt").exists()
    assert _leftovers(tmp_path) == []


def test_atomic_folder_accepts_a_folder_another_process_finished(tmp_path, monkeypatch):
    """Another writer puts its folder in place between our check and our rename (simulated in Path.rename)."""
    target = tmp_path / "out"
    rename = Path.rename

    def racing_rename(self, dest):
        if Path(dest) == target and not target.exists():
            target.mkdir()
            (target / "theirs.txt").write_text("theirs")
        return rename(self, dest)

    monkeypatch.setattr(Path, "rename", racing_rename)
    with pytest.raises(OSError):  # without accept_existing the rename's failure stands
        atomic_folder(target, lambda tmp: (tmp / "ours.txt").write_text("ours"))
    shutil.rmtree(target)
    got = atomic_folder(target, lambda tmp: (tmp / "ours.txt").write_text("ours"),
                        accept_existing=lambda p: (p / "theirs.txt").is_file())
    assert got == target and sorted(p.name for p in target.iterdir()) == ["theirs.txt"]
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------- YAML input
@pytest.mark.parametrize("text, key, line, first", [
    ("a: 1\nb: 2\na: 3\n", "a", 3, 1),
    ("top:\n  x: [1]\n  y: {}\n  x: [2]\n", "x", 4, 2),
    ("- {k: 1, k: 2}\n", "k", 1, 1),
    ("1: a\n1: b\n", 1, 2, 1),
])
def test_load_yaml_refuses_a_key_given_twice(text, key, line, first):
    with pytest.raises(DuplicateKeyError) as err:
        load_yaml(text, "some/file.yaml")
    assert str(err.value).startswith(f"some/file.yaml: line {line}, column ")
    assert f"key {key!r} is given twice in one mapping (first on line {first}). Fix: remove one of them." in str(
        err.value)


def test_load_yaml_is_safe_load_otherwise():
    text = "base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  x: 3\nlist: [1, 2]\nnone:\n"
    assert load_yaml(text, "f") == yaml.safe_load(text) == {"base": {"x": 1, "y": 2}, "other": {"x": 3, "y": 2},
                                                            "list": [1, 2], "none": None}
    assert load_yaml("", "f") is None
    with pytest.raises(yaml.constructor.ConstructorError):  # still safe: no Python objects
        load_yaml("!!python/object/apply:os.getcwd []", "f")
