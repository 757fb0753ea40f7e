"""Committed stages: each finished stage's small outputs copied atomically into
``<committed_root>/<name>/runs/<key>/<stage>/`` with its settings digest, training progress, git ignore checks."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import pandas as pd
import yaml

from coinlib.core.fileio import atomic_folder, atomic_write_text
from coinlib.core.params import Params
from coinlib.core.sources import repo_relative
from coinlib.study.spec import StudySpec

#: Settings that do not change what a stage produces (excluded from the settings digest).
NEUTRAL = {"train": {"logging_steps", "save_steps", "save_total_limit", "report_to"}, "evaluate": {"batch_size"}}
_rel = repo_relative


def _sections(P: Params, stage: str) -> dict[str, Any]:
    """The settings that decide a stage's outputs."""
    d = P.model_dump(by_alias=True)
    keep = ("model", "data", "train") if stage == "train" else ("model", "evaluate")
    out = {s: {k: v for k, v in d[s].items() if k not in NEUTRAL.get(s, set())} for s in keep}
    out["seed"] = P.run.seed
    return out


def settings_digest(P: Params, stage: str, train_P: Optional[Params] = None) -> str:
    """Digest of the settings of a ``train`` or evaluation stage (an evaluation includes its run's training)."""
    key = {"stage": _sections(P, stage), "trained": _sections(train_P, "train") if train_P else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k2: v2 for k, v in d.items() for k2, v2 in _flat(v, f"{prefix}{k}.").items()}
    return {prefix.rstrip("."): d}


#: Folder below a study's committed folder holding each run's committed stages.
COMMITTED_RUNS = "runs"


def runs_dir(spec: StudySpec) -> Path:
    """``<committed_root>/<name>/runs``: one folder per run key, one per stage below it."""
    return spec.committed_dir / COMMITTED_RUNS


def stage_dir(spec: StudySpec, key: str, stage: str) -> Path:
    return runs_dir(spec) / key / stage


def stage_state(folder: Path, digest: str, P: Optional[Params] = None) -> Literal["done", "missing", "stale"]:
    """``done`` when ``folder`` holds a finished stage with these settings, ``stale`` with others, else ``missing``.

    With ``P``, a stage whose digest differs is still ``done`` when no setting differs (:func:`stale_keys`): a
    parameter added to the schema after the stage was committed, left at its default, changes nothing.
    """
    meta = folder / "stage.json"
    if not meta.is_file():
        return "missing"
    if json.loads(meta.read_text(encoding="utf-8")).get("digest") == digest:
        return "done"
    return "done" if P is not None and not stale_keys(folder, P) else "stale"


def stale_keys(folder: Path, P: Params) -> list[str]:
    """Parameter keys whose committed value (``folder/params.yaml``) differs from ``P``'s.

    A key the committed file lacks counts at its schema default (new parameters default to the old behaviour);
    run names, analysis settings and the ``NEUTRAL`` keys never count.
    """
    path = folder / "params.yaml"
    if not path.is_file():
        return ["params.yaml missing"]
    old, new = _flat(yaml.safe_load(path.read_text(encoding="utf-8"))), _flat(P.model_dump(by_alias=True))
    default = _flat(Params.defaults())
    skip = ("run.", "analysis.", *(f"{s}.{k}" for s, keys in NEUTRAL.items() for k in keys))
    return sorted(k for k in set(old) | set(new)
                  if old.get(k, default.get(k)) != new.get(k) and not any(k == s or k.startswith(s) for s in skip))


def commit_stage(folder: Path, files: dict[str, Path | str], meta: dict[str, Any]) -> Path:
    """Copy ``files`` (name -> source path, or text) and ``stage.json`` into ``folder`` atomically (renamed into
    place whole; a previous version is replaced)."""
    def fill(tmp: Path) -> None:
        for name, source in files.items():
            if isinstance(source, Path):
                shutil.copyfile(source, tmp / name)
            else:
                (tmp / name).write_text(source, encoding="utf-8")
        (tmp / "stage.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")

    return atomic_folder(folder, fill)


#: Stage folder name of a run's committed training progress (:attr:`StudySpec.commit_progress`).
PROGRESS = "train-progress"


#: What resuming needs of a Trainer checkpoint (plus ``rng_state*.pth``); the tokenizer files and model card are not
#: committed (about 4 MB of the 26 of a SmolLM2-135M checkpoint), nor the pickled training arguments (they hold
#: machine paths; resuming reads none of them).
PROGRESS_FILES = {"adapter_config.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt",
                  "trainer_state.json"}


def save_progress(checkpoint: Path, folder: Path, digest: str, clock: Optional[Path] = None,
                  P: Optional[Params] = None) -> Path:
    """Commit what resuming ``checkpoint`` (a Trainer checkpoint folder) needs, the stage's attempt times
    (``clock``) and the run's parameters (``P``, as ``params.yaml``) to ``folder``, replacing the previous progress
    atomically."""
    files: dict[str, Path | str] = {p.name: p for p in sorted(checkpoint.iterdir()) if p.is_file() and (
        p.name in PROGRESS_FILES or p.name.startswith("rng_state"))}
    if P is not None:
        files["params.yaml"] = _params_yaml(P)
    if "adapter_config.json" in files:  # the base model as the parameters name it, not a path on this machine
        config = json.loads(Path(files["adapter_config.json"]).read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = P.model.name if P is not None else None
        if isinstance(config.get("target_modules"), list):  # peft writes a set in hash order: stable diffs
            config["target_modules"] = sorted(config["target_modules"])
        files["adapter_config.json"] = json.dumps(config, indent=2, sort_keys=True)
    if clock is not None and clock.is_file():
        files["study_clock.json"] = clock
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    return commit_stage(folder, files, {"digest": digest, "step": step, "checkpoint": checkpoint.name})


def restore_progress(folder: Path, digest: str, checkpoints: Path, clock: Path,
                     P: Optional[Params] = None) -> Optional[Path]:
    """Copy committed progress (:func:`save_progress`) back to ``checkpoints/checkpoint-N`` when it was made with
    these settings and is newer than every intact local checkpoint; the attempt times too when none are local.
    Returns the restored checkpoint, or None."""
    from coinlib.train.trainer import last_complete_checkpoint  # torch and transformers: only when resuming

    meta = _read_meta(folder)
    same = meta.get("digest") == digest or (  # a parameter added since, at its default, changes nothing
        P is not None and (folder / "params.yaml").is_file() and not stale_keys(folder, P))
    if not same or not isinstance(meta.get("step"), int):
        return None
    local = last_complete_checkpoint(checkpoints)
    if local is not None and int(Path(local).name.removeprefix("checkpoint-")) >= meta["step"]:
        return None
    target = checkpoints / f"checkpoint-{meta['step']}"

    def fill(tmp: Path) -> None:
        for f in folder.iterdir():
            if f.is_file() and f.name not in ("stage.json", "study_clock.json", "params.yaml"):
                shutil.copyfile(f, tmp / f.name)

    atomic_folder(target, fill)
    if (folder / "study_clock.json").is_file() and not clock.is_file():
        clock.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads((folder / "study_clock.json").read_text(encoding="utf-8"))
        saved["digest"] = digest  # the settings were judged the same above: their attempts count under this digest
        atomic_write_text(clock, json.dumps(saved))
    return target



def git_ignore_rule(path: Path) -> Optional[str]:
    """The rule (``file:line:pattern``) by which git ignores ``path`` (which need not exist); None when git would track
    it, or when ``path`` is not in a git work tree or git is missing."""
    git = shutil.which("git")
    anchor = next((p for p in (path, *path.parents) if p.is_dir()), None)
    if git is None or anchor is None:
        return None
    out = subprocess.run([git, "check-ignore", "--verbose", "--no-index", str(path)], cwd=anchor, capture_output=True,
                         text=True)
    return (out.stdout.split("\t", 1)[0].strip() or "an ignore rule") if out.returncode == 0 else None


def warn_if_git_ignored(spec: StudySpec, log: Callable[[str], None]) -> Optional[str]:
    """Warn when git would not commit the study's committed outputs (a fresh clone could not resume from them)."""
    probe = stage_dir(spec, f"{spec.reference}-s{spec.seeds[0]}", "train") / "stage.json"
    rule = git_ignore_rule(probe)
    if rule:
        log(f"[study] warning: git ignores the committed outputs ({_rel(probe)} matches {rule}), so they cannot be "
            f"committed and a fresh clone would redo every run. Fix: narrow that rule (e.g. anchor it: '/runs/') or "
            f"set committed_root in {spec.source or 'the spec'} to a tracked folder.")
    return rule


def _params_yaml(P: Params) -> str:
    return "base: null\n" + P.to_yaml()



def stage_times(spec: StudySpec) -> dict[str, float]:
    """Median wall seconds of the committed stages of each kind (``train``, ``eval-<format>``): the --plan estimate."""
    times: dict[str, list[float]] = {}
    for meta in sorted(runs_dir(spec).glob("*/*/stage.json")):
        wall = _read_meta(meta.parent).get("wall_s")
        if isinstance(wall, (int, float)) and wall > 0:
            times.setdefault(meta.parent.name, []).append(float(wall))
    return {kind: float(pd.Series(v).median()) for kind, v in times.items()}


def training_progress(spec: StudySpec) -> dict[str, tuple[int, float]]:
    """Per run key with committed training progress (:data:`PROGRESS`): the step it reached and the wall seconds
    its attempts took to get there (``study_clock.json``); a run without recorded times is left out."""
    out = {}
    for meta_path in sorted(runs_dir(spec).glob(f"*/{PROGRESS}/stage.json")):
        step = _read_meta(meta_path.parent).get("step")
        clock = meta_path.parent / "study_clock.json"
        spent = sum(json.loads(clock.read_text(encoding="utf-8")).get("attempts_s", [])) if clock.is_file() else 0
        if isinstance(step, int) and step > 0 and spent > 0:
            out[meta_path.parent.parent.name] = (step, float(spent))
    return out


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / "stage.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
