"""Atomic file and folder writes: outputs appear whole or not at all, so an interrupted run never leaves a torn one.

Also :func:`load_yaml`, the safe YAML loading of every user-edited file (a key given twice is an error).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """Call ``write`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def update_digest(h: "hashlib._Hash", path: str | os.PathLike) -> "hashlib._Hash":
    """Feed the bytes of ``path`` into the hash ``h`` (in 1 MiB pieces, so large files need little memory)."""
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h


def atomic_folder(path: str | os.PathLike, fill: Callable[[Path], object],
                  accept_existing: Callable[[Path], bool] | None = None) -> Path:
    """Call ``fill`` on a fresh temporary folder beside ``path``, then swap it into place.

    A reader sees the previous folder or the new one, never a partial one: the temporary folder
    (``.NAME.tmp-PID``) is renamed into place whole; a previous ``path`` is first moved aside (``.NAME.old-PID``)
    and deleted afterwards (put back if the rename fails). When the rename fails because another process put
    ``path`` there in between and ``accept_existing(path)`` says its folder will do, ours is discarded instead.
    A kill leaves at most a ``.NAME.tmp-PID`` or ``.NAME.old-PID`` folder, never read and safe to delete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir()
    try:
        fill(tmp)
        moved = False
        if path.exists():
            path.rename(old)
            moved = True
        try:
            tmp.rename(path)
        except OSError:
            if moved and not path.exists():
                old.rename(path)
            elif accept_existing is not None and path.is_dir() and accept_existing(path):
                return path
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return path


# ------------------------------------------------------------------------------------------- YAML input
_MERGE_TAG = "tag:yaml.org,2002:merge"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of a YAML file gives one key twice; the message names the file, the key, both lines and the fix."""

    def __init__(self, where: str, key: Any, first_line: int, mark: yaml.Mark) -> None:
        super().__init__(None, None, f"key {key!r} is given twice in one mapping (first on line {first_line})", mark)
        self.where = where

    def __str__(self) -> str:
        mark = self.problem_mark
        return (f"{self.where}: line {mark.line + 1}, column {mark.column + 1}: {self.problem}. "
                "Fix: remove one of them.")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML would keep the last one silently)."""

    where = "<yaml>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue  # `<<: *anchor` keys may be overridden: SafeLoader merges them
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                continue  # unhashable keys: SafeLoader's own error
            if key in first:
                raise DuplicateKeyError(self.where, key, first[key], key_node.start_mark)
            first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def load_yaml(text: str, where: str) -> Any:
    """``yaml.safe_load(text)``, but a key given twice in one mapping raises :class:`DuplicateKeyError` naming
    ``where`` (the file), the key and its lines. Other errors are PyYAML's own (:class:`yaml.YAMLError`)."""
    loader = _UniqueKeyLoader(text)
    loader.where = where
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
