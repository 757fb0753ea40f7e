"""Atomic file and folder writes: outputs appear whole or not at all, so an interrupted run never leaves a torn one."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Callable


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
