"""Evaluation prompt sets: ``group -> task -> list of instructions``.

Named sets are loaded at run time through :mod:`coinlib.core.sources` (mirror or pinned origin), never stored here:

- ``coin_eval_prompts``: the paper's set, 5 groups (clean, deepwordbug, textfooler, checklist, semantic) x 6
  instructions per GLUE task.
- ``promptbench_prompts``: PromptBench's clean task-oriented prompts (the copy the paper's code vendors), as the
  single group ``clean``.

Any other value is a path to a user file, JSON (``.json``) or YAML (``.yaml``/``.yml``), shaped like::

    clean:                       # group
      sst2:                      # task (GLUE config name)
        - "Is this review positive or negative? "
        - "..."
    checklist:
      sst2: ["..."]

MNLI-matched and -mismatched use MNLI's instructions unless the set lists them itself. Instructions are sent as
written and the instance's content is placed after them by ``evaluate.input_format``; a ``{name}`` placeholder
(PromptBench's ``{content}`` included) would never be filled, so a set containing one is rejected.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from coinlib.core.fileio import DuplicateKeyError, load_yaml
from coinlib.core.sources import load_json_artifact
from coinlib.core.tasks import prompt_aliases

PromptSet = dict[str, dict[str, list[str]]]
PLACEHOLDER = re.compile(r"{\w*}")

NAMED_SETS = ("coin_eval_prompts", "promptbench_prompts")
_METADATA_KEYS = {"source", "license", "tasks"}
#: Mirror key of the PromptBench prompts the paper's code vendors (the online origin is that same file).
_PROMPTBENCH_KEY = "coin_vendored_task_oriented"


class PromptSetError(ValueError):
    """A prompt set is missing, malformed, or lacks a requested group or task."""


def load_prompt_set(name_or_path: str | os.PathLike, mirror: str | os.PathLike | None = "auto") -> PromptSet:
    """Load a prompt set by name (:data:`NAMED_SETS`) or from a JSON/YAML file; see the module docstring."""
    name = str(name_or_path)
    if name == "coin_eval_prompts":
        doc = load_json_artifact(name, mirror)
        raw = doc.get("origin", doc)
        where = name
    elif name == "promptbench_prompts":
        doc = load_json_artifact(name, mirror)
        raw = {"clean": doc["origin"] if "origin" in doc else doc[_PROMPTBENCH_KEY]}
        where = name
    else:
        raw, where = _read_file(Path(name_or_path)), str(name_or_path)
    return _with_aliases(_validate({k: v for k, v in raw.items() if k not in _METADATA_KEYS}, where))


def select(prompts: PromptSet, groups: list[str], tasks: list[str], n_instructions: int | None = None) -> PromptSet:
    """The requested groups and tasks (first ``n_instructions`` of each list when given); errors name what is missing."""
    missing_groups = [g for g in groups if g not in prompts]
    if missing_groups:
        raise PromptSetError(
            f"prompt set has no group(s) {missing_groups}; it has {sorted(prompts)}. "
            "Fix: set evaluate.groups to groups the set provides, or use another prompt set."
        )
    out: PromptSet = {}
    for g in groups:
        missing = [t for t in tasks if t not in prompts[g]]
        if missing:
            raise PromptSetError(
                f"prompt set group {g!r} has no instructions for task(s) {missing}; it has {sorted(prompts[g])}. "
                "Fix: drop those tasks from evaluate.tasks or add them to the prompt-set file."
            )
        out[g] = {t: list(prompts[g][t][:n_instructions]) for t in tasks}
    return out


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PromptSetError(
            f"prompt set {str(path)!r} is neither a known name ({', '.join(NAMED_SETS)}) nor an existing file. "
            "Fix: give a named set or the path of a JSON/YAML file (group -> task -> list of instructions)."
        )
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        elif path.suffix.lower() in {".yaml", ".yml"}:
            data = load_yaml(text, str(path))
        else:
            raise PromptSetError(f"{path}: unsupported prompt-set file type {path.suffix!r}; use .json, .yaml or .yml")
    except DuplicateKeyError as exc:  # a group or task given twice: the last list would win silently
        raise PromptSetError(str(exc)) from exc
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PromptSetError(f"{path}: cannot parse the prompt-set file ({exc}). Fix its syntax.") from exc
    if not isinstance(data, dict):
        raise PromptSetError(f"{path}: expected a mapping group -> task -> list of instructions, got {type(data).__name__}")
    return data


def _validate(raw: dict[str, Any], where: str) -> PromptSet:
    problems = []
    for group, tasks in raw.items():
        if not isinstance(tasks, dict) or not tasks:
            problems.append(f"group {group!r} must map task names to lists of instructions")
            continue
        for task, instructions in tasks.items():
            ok = isinstance(instructions, list) and instructions and all(isinstance(s, str) and s for s in instructions)
            if not ok:
                problems.append(f"{group}.{task} must be a non-empty list of non-empty strings")
                continue
            for i, text in enumerate(instructions):
                names = PLACEHOLDER.findall(text)
                if names:
                    problems.append(
                        f"group {group!r}, task {task!r}, instruction {i} {text!r} contains the placeholder(s) "
                        f"{', '.join(names)}, which are never filled (the content follows the instruction as "
                        "evaluate.input_format says). Fix: remove them and any text meant to surround the content, "
                        "e.g. 'Question:{content}' or 'Answer:'")
    if not raw:
        problems.append("no groups")
    if problems:
        raise PromptSetError(f"{where}: invalid prompt set: " + "; ".join(problems))
    return {str(g): {str(t): list(v) for t, v in tasks.items()} for g, tasks in raw.items()}


def _with_aliases(prompts: PromptSet) -> PromptSet:
    for tasks in prompts.values():
        for alias, source in prompt_aliases().items():
            if alias not in tasks and source in tasks:
                tasks[alias] = list(tasks[source])
    return prompts
