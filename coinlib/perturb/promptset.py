"""Generated prompt sets: the clean instructions of a set plus one variant of each per level.

File format (JSON), as the evaluation reads prompt sets (:func:`coinlib.core.promptsets.load_prompt_set`):
``{group: {task: [instruction, ...]}}`` plus the metadata keys ``license`` and ``source``. Here ``source`` is
a mapping (provenance): generator, seed, budget, levels, ``clean_source`` (mirrors the groups: the clean
instruction each variant was made from, at the same position) and ``rejected`` (semantic rephrases that
failed; their variant is left out, so a group may hold fewer instructions than ``clean``).
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm.auto import tqdm

from coinlib.core.fileio import atomic_write_text
from coinlib.core.groups import GROUP_OF, LEVELS, RULE_LEVELS
from coinlib.core.sources import JSON_ARTIFACTS, load_json_artifact
from coinlib.core.tasks import TASKS
from coinlib.perturb import RephraseRejected, perturb_instruction

log = logging.getLogger(__name__)
META_KEYS = ("source", "license", "tasks")


def variant_seed(seed: int, task: str, index: int) -> int:
    """Seed of one variant: stable across processes and platforms (not Python's salted ``hash``)."""
    return zlib.crc32(f"{seed}:{task}:{index}".encode())


def clean_instructions(source: str | os.PathLike = "coin_eval_prompts", mirror: str | None = "auto",
                       group: str = "clean") -> dict[str, list[str]]:
    """``{task: instructions}`` of one group of a prompt set (artifact name or JSON file), label tasks only."""

    if str(source) in JSON_ARTIFACTS:
        data = load_json_artifact(str(source), mirror)
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"prompt set {source!r}: neither an artifact ({sorted(JSON_ARTIFACTS)}) "
                                    "nor an existing JSON file")
        data = json.loads(path.read_text(encoding="utf-8"))
    if group not in data:
        raise KeyError(f"prompt set {source!r} has no group {group!r}; groups: "
                       f"{[k for k in data if k not in META_KEYS]}")
    return {t: list(v) for t, v in data[group].items() if t in TASKS}


def build_prompt_set(
    clean: dict[str, list[str]],
    levels: Iterable[str] = RULE_LEVELS,
    seed: int = 0,
    budget: int = 4,
    options: dict[str, dict[str, Any]] | None = None,
    source_name: str = "coin_eval_prompts",
    progress: Callable | None = tqdm,
) -> dict[str, Any]:
    """A prompt set with the ``clean`` group and one variant of every clean instruction per level.

    ``options``: per-level keyword arguments for :func:`coinlib.perturb.perturb_instruction` (e.g.
    ``{"word": {"synonyms": src}, "semantic": {"generate": gen}}``). Task label words are protected.
    """
    levels = list(levels)
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown:
        raise ValueError(f"unknown levels {unknown}; choose from {LEVELS}")
    options = options or {}
    meta: dict[str, Any] = {"generator": "coinlib.perturb", "from": f"{source_name} (clean)", "seed": seed,
                            "budget": budget, "levels": levels, "groups": {}, "clean_source": {}, "rejected": {}}
    out: dict[str, Any] = {
        "source": meta,
        "license": f"derived from {source_name}; see its license",
        "clean": {t: list(v) for t, v in clean.items()},
    }
    jobs = [(lv, t, i, s) for lv in levels for t, insts in clean.items() for i, s in enumerate(insts)]
    for level, task, i, src in (progress(jobs, desc="perturb") if progress else jobs):
        group = GROUP_OF[level]
        meta["groups"][group] = level
        try:
            variant = perturb_instruction(src, level, seed=variant_seed(seed, task, i), task=task, budget=budget,
                                          **options.get(level, {}))
        except RephraseRejected as exc:
            meta["rejected"].setdefault(group, {}).setdefault(task, []).append({"index": i, "reason": str(exc)})
            continue
        out.setdefault(group, {}).setdefault(task, []).append(variant)
        meta["clean_source"].setdefault(group, {}).setdefault(task, []).append(src)
    return out


def write_prompt_set(data: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write a prompt set as JSON atomically (temporary file, then rename)."""
    return atomic_write_text(path, json.dumps(data, indent=1, ensure_ascii=False) + "\n")
