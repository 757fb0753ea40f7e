"""A multi-seed study: arms x seeds trained and evaluated in several input formats, resumable across sessions.

    python -m coinlib.results.study params/studies/sentiment.yaml --only pilot   # the go/no-go pilot first
    python -m coinlib.results.study params/studies/sentiment.yaml               # everything (skips what is done)
    python -m coinlib.results.study params/studies/sentiment.yaml --arms coin --seeds 1 --formats train  # one run
    python -m coinlib.results.study params/studies/sentiment.yaml --plan        # what is done, what is left
    python -m coinlib.results.study params/studies/sentiment.yaml --report      # tables and figure only
    python -m coinlib.results.study params/studies/sentiment.yaml --print-params coin-s1:train
    python -m coinlib.results.study params/studies/sentiment.yaml --set evaluate.n_per_task=50 --plan  # every arm

A study spec (:class:`StudySpec`, YAML) names a shared parameter file (the recipe) and arms, each a few overrides of
its ``model``/``data``/``train`` sections; the driver expands arms x seeds into training runs
``<name>-<arm>-s<seed>`` (``run.seed`` = the seed: data sample, data order, LoRA initialisation) and each run into one
evaluation per input format (the same evaluation sample for every run), plus the untrained base model.

Each finished stage's small outputs (``params.yaml``, ``train_log.csv``; ``summary.csv``, ``predictions.parquet``;
``stage.json`` with the wall time) are copied atomically (one folder renamed into place) into the committed folder
``<committed_root>/<name>/runs/<arm>-s<seed>/{train,eval-<format>}/``. A stage whose committed folder exists with the
same settings is done: a run is retrained only when one of its evaluations is missing and its adapter is not in
``runs/`` (so a fresh clone resumes from the repository alone). Committed outputs made with other settings stop the
driver with the differing keys (``--replace-stale`` redoes them).

The pilot (``gate.arm`` at ``gate.seed``) runs first; if its ``gate.metric`` on ``gate.task``/``gate.group`` in
``gate.format`` stays below ``gate.threshold``, the driver says so and stops (``--ignore-gate`` overrides).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional, Sequence

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm
from transformers import TrainerCallback

from coinlib.core.fileio import atomic_write_text
from coinlib.core.precision import precision_record
from coinlib.core.params import (
    PARAMS_DIR,
    ParamsError,
    Params,
    add_set_argument,
    deep_merge,
    parse_sets,
    read_yaml,
    sets_note,
    validate,
)
from coinlib.core.sources import REPO_ROOT, repo_relative
from coinlib.evaluate.compare import across_seeds, long_format, paired_bootstrap
from coinlib.evaluate.runner import _weights_digest, run_evaluation
from coinlib.train.trainer import train

BASE_KEY = "base"
FORMATS = ("train", "paper", "chat")
#: Settings that do not change what a stage produces (excluded from the settings digest).
NEUTRAL = {"train": {"logging_steps", "save_steps", "save_total_limit", "report_to"}, "evaluate": {"batch_size"}}
GATE_FAILED = 3
#: Seconds between two records of a running attempt's wall time (what an attempt killed outright can leave uncounted).
CLOCK_BEAT_S = 10.0


class StudyError(RuntimeError):
    """The study cannot proceed; the message names the problem and the fix."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmSpec(_Spec):
    """One arm: a display label and overrides of the recipe's ``model``, ``data`` and ``train`` sections."""

    label: str
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)


class GateSpec(_Spec):
    """Go/no-go: the pilot run must reach ``threshold`` on ``metric`` (a summary column) before the rest is spent."""

    arm: str = "cit"
    seed: int = 0
    format: Literal["train", "paper", "chat"] = "train"
    task: str = "sst2"
    group: str = "clean"
    metric: Literal["cal_acc", "auc", "mean_acc"] = "cal_acc"
    threshold: float = Field(0.75, ge=0.0, le=1.0)


class StudySpec(_Spec):
    """Arms x seeds x input formats over one recipe (module doc)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    params: str = Field(description="the recipe: a parameter file, relative to this file's folder or params/")
    arms: dict[str, ArmSpec]
    reference: str = Field("cit", description="arm every other arm is compared with (differences: arm - reference)")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    formats: list[Literal["train", "paper", "chat"]] = Field(default_factory=lambda: ["train", "paper"], min_length=1)
    base_model: bool = Field(True, description="also evaluate the untrained base model in every format")
    gate: GateSpec = Field(default_factory=GateSpec)
    committed_root: str = Field("figures", description="committed outputs go to <committed_root>/<name>/")
    commit_progress: bool = Field(
        False, description="copy each training run's newest checkpoint into the committed folder at every save "
        "(runs/<key>/train-progress/), so a run longer than a session resumes in the next from the repository "
        "alone; costs the size of a checkpoint (adapter + optimizer state) per run")
    n_boot: int = Field(2000, ge=1, description="bootstrap resamples of the paired comparison within a seed")
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    source: Optional[str] = Field(None, description="set by load_spec: the spec file")
    sets: list[str] = Field(default_factory=list, description="set by load_spec: the command line's --set KEY=VALUE "
                            "overrides, merged over the recipe before each arm's own")

    @model_validator(mode="after")
    def _consistent(self) -> "StudySpec":
        bad = [a for a in self.arms if not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", a) or a == BASE_KEY]
        if bad:
            raise ValueError(f"arm names {bad}: use lowercase letters, digits, '-' or '_' (and not {BASE_KEY!r})")
        for what, arm in (("reference", self.reference), ("gate.arm", self.gate.arm)):
            if arm not in self.arms:
                raise ValueError(f"{what} {arm!r} is not an arm (arms: {', '.join(self.arms)})")
        if self.gate.format not in self.formats:
            raise ValueError(f"gate.format {self.gate.format!r} is not among formats {self.formats}")
        if len(set(self.seeds)) != len(self.seeds) or len(set(self.formats)) != len(self.formats):
            raise ValueError("seeds and formats must not repeat")
        return self

    @property
    def params_path(self) -> Path:
        here = Path(self.source).parent if self.source else PARAMS_DIR
        for candidate in (here / self.params, PARAMS_DIR / self.params):
            if candidate.is_file():
                return candidate
        raise StudyError(f"{self.source or 'study spec'}: params file {self.params!r} not found (looked in {here} and "
                         f"{PARAMS_DIR}). Fix: name an existing parameter file.")

    @property
    def committed_dir(self) -> Path:
        """``<committed_root>/<name>``: the report; ``runs/`` below it holds each run's committed outputs."""
        root = Path(self.committed_root)
        return (root if root.is_absolute() else REPO_ROOT / root) / self.name


def load_spec(path: str | Path, sets: Sequence[str] = ()) -> StudySpec:
    """Read and validate a study spec, with ``--set`` overrides of its recipe (:func:`coinlib.core.params.parse_sets`,
    applied under every arm's overrides); errors name the file, the key and what is expected."""
    path = Path(path)
    try:
        raw = read_yaml(path)
        parse_sets(sets)
    except ParamsError as exc:
        raise StudyError(str(exc)) from None
    try:
        spec = StudySpec.model_validate({**raw, "source": str(path), "sets": list(sets)})
    except ValidationError as exc:
        lines = [f"{path}: {'.'.join(str(p) for p in e['loc']) or 'spec'}: {e['msg']}" for e in exc.errors()]
        raise StudyError("\n".join(lines)) from None
    for arm in spec.arms:  # every arm must give valid parameters
        arm_params(spec, arm, spec.seeds[0])
    return spec


# ------------------------------------------------------------------------------------------------ expansion
@dataclass
class RunPlan:
    """One training run (``train`` None for the base model) and its evaluations by input format."""

    key: str
    arm: str
    seed: Optional[int]
    train: Optional[Params]
    evals: dict[str, Params] = field(default_factory=dict)


def arm_params(spec: StudySpec, arm: str, seed: int) -> Params:
    """Training parameters of ``arm`` at ``seed``: the recipe with the arm's overrides, run ``<name>-<arm>-s<seed>``."""
    path = spec.params_path
    a = spec.arms[arm]
    overrides = {s: v for s, v in (("model", a.model), ("data", a.data), ("train", a.train)) if v}
    recipe = deep_merge(read_yaml(path), parse_sets(spec.sets))
    values = deep_merge(recipe, {**overrides, "run": {"name": f"{spec.name}-{arm}-s{seed}", "seed": seed}})
    try:
        return validate(values, f"{spec.source or 'study'}: arms.{arm} over {path}{sets_note(spec.sets)}", path.parent)
    except ParamsError as exc:
        raise StudyError(str(exc)) from None


def eval_params(P: Params, fmt: str, adapter: Optional[str]) -> Params:
    """Evaluation of ``adapter`` (a run name; None = the base model) in input format ``fmt``, as run
    ``<run>-eval-<fmt>``."""
    values = P.model_dump(by_alias=True, exclude={"base"})
    values["base"] = None
    values["run"]["name"] = f"{P.run.name}-eval-{fmt}"
    values["evaluate"].update(input_format=fmt, adapters=[adapter] if adapter else [], include_base=adapter is None)
    return validate(values, f"evaluation {values['run']['name']}")


def expand(spec: StudySpec, arms: Iterable[str] | None = None, seeds: Iterable[int] | None = None,
           formats: Iterable[str] | None = None, base_model: bool | None = None) -> list[RunPlan]:
    """Every run of the study (or of the given subsets), seed by seed and arm by arm (the base model first)."""
    arms, seeds = list(spec.arms if arms is None else arms), list(spec.seeds if seeds is None else seeds)
    formats = list(formats or spec.formats)
    unknown = [a for a in arms if a not in spec.arms] + [f for f in formats if f not in FORMATS]
    if unknown:
        raise StudyError(f"unknown arms or formats {unknown}; arms: {', '.join(spec.arms)}; formats: {FORMATS}")
    plans = []
    if spec.base_model if base_model is None else base_model:
        base = arm_params(spec, spec.reference, spec.seeds[0]).model_copy(deep=True)
        base.run.name = f"{spec.name}-{BASE_KEY}"
        plans.append(RunPlan(BASE_KEY, BASE_KEY, None, None, {f: eval_params(base, f, None) for f in formats}))
    for seed in seeds:
        for arm in arms:
            P = arm_params(spec, arm, seed)
            plans.append(RunPlan(f"{arm}-s{seed}", arm, seed, P, {f: eval_params(P, f, P.run.name) for f in formats}))
    return plans


def pilot_plan(spec: StudySpec) -> RunPlan:
    """The gate's run, its gate format evaluated first."""
    P = arm_params(spec, spec.gate.arm, spec.gate.seed)
    formats = [spec.gate.format, *[f for f in spec.formats if f != spec.gate.format]]
    return RunPlan(f"{spec.gate.arm}-s{spec.gate.seed}", spec.gate.arm, spec.gate.seed, P,
                   {f: eval_params(P, f, P.run.name) for f in formats})


# ------------------------------------------------------------------------------------------------ committed outputs
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


def stage_dir(spec: StudySpec, key: str, stage: str) -> Path:
    return spec.committed_dir / "runs" / key / stage


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
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, source in files.items():
        if isinstance(source, Path):
            shutil.copyfile(source, tmp / name)
        else:
            (tmp / name).write_text(source, encoding="utf-8")
    (tmp / "stage.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


#: Stage folder name of a run's committed training progress (:attr:`StudySpec.commit_progress`).
PROGRESS = "train-progress"


def save_progress(checkpoint: Path, folder: Path, digest: str, clock: Optional[Path] = None) -> Path:
    """Commit ``checkpoint`` (a Trainer checkpoint folder) and the stage's attempt times (``clock``) to ``folder``,
    replacing the previous progress atomically."""
    files: dict[str, Path | str] = {p.name: p for p in sorted(checkpoint.iterdir()) if p.is_file()}
    if clock is not None and clock.is_file():
        files["study_clock.json"] = clock
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    return commit_stage(folder, files, {"digest": digest, "step": step, "checkpoint": checkpoint.name})


def restore_progress(folder: Path, digest: str, checkpoints: Path, clock: Path) -> Optional[Path]:
    """Copy committed progress (:func:`save_progress`) back to ``checkpoints/checkpoint-N`` when it was made with
    these settings and is newer than every intact local checkpoint; the attempt times too when none are local.
    Returns the restored checkpoint, or None."""
    from coinlib.train.trainer import last_complete_checkpoint

    meta = _read_meta(folder)
    if meta.get("digest") != digest or not isinstance(meta.get("step"), int):
        return None
    local = last_complete_checkpoint(checkpoints)
    if local is not None and int(Path(local).name.removeprefix("checkpoint-")) >= meta["step"]:
        return None
    target = checkpoints / f"checkpoint-{meta['step']}"
    tmp = checkpoints / f".restore-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file() and f.name not in ("stage.json", "study_clock.json"):
            shutil.copyfile(f, tmp / f.name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    if (folder / "study_clock.json").is_file() and not clock.is_file():
        clock.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "study_clock.json", clock)
    return target


class ProgressKeeper(TrainerCallback):
    """Commits the newest checkpoint after every save (:func:`save_progress`)."""

    def __init__(self, folder: Path, digest: str, clock: Path):
        self.folder, self.digest, self.clock = folder, digest, clock

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            save_progress(checkpoint, self.folder, self.digest, self.clock)


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


def _meta(digest: str, wall_s: float, adapter: Optional[str], command: str, P: Params) -> dict[str, Any]:
    return {"digest": digest, "wall_s": round(wall_s, 1), "finished_utc": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "adapter_digest": _weights_digest(adapter) if adapter else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "command": command,
            "precision": precision_record(P.model.dtype)}


# ------------------------------------------------------------------------------------------------ gate
@dataclass(frozen=True)
class GateDecision:
    passed: bool
    value: float
    message: str


def gate_decision(summary: pd.DataFrame, gate: GateSpec, where: str = "pilot", fix: str = "") -> GateDecision:
    """Whether the pilot's evaluation ``summary`` reaches the gate; the message states the evidence and what to do."""
    rows = summary[(summary["task"] == gate.task) & (summary["group"] == gate.group)]
    if len(rows) != 1 or gate.metric not in rows.columns:
        raise StudyError(f"{where}: the summary has no single {gate.task}/{gate.group} row with {gate.metric!r}. "
                         "Fix: the gate's task and group must be evaluated (evaluate.tasks, evaluate.groups).")
    value = float(rows[gate.metric].iloc[0])
    what = (f"{gate.arm} seed {gate.seed}, {gate.format} format, {gate.task} {gate.group} instructions: "
            f"{gate.metric} {100 * value:.1f}% (gate {100 * gate.threshold:.1f}%)")
    if value >= gate.threshold:
        return GateDecision(True, value, f"GATE PASSED: {what}; continuing with the other runs.")
    return GateDecision(False, value, (
        f"GATE STOPPED THE STUDY: {what}. The pilot model does not separate the labels well enough for instruction "
        f"sensitivity to be measured. Fix: strengthen the recipe {fix}(more train.max_steps or data.size; the pilot is "
        "then redone with --replace-stale), or pass --ignore-gate to spend the rest anyway."))


# ------------------------------------------------------------------------------------------------ driver
class StageClock:
    """Wall time of a stage summed over its attempts (a killed training or evaluation resumes where it stopped), kept
    in ``path`` as ``{"digest": settings, "attempts_s": [...]}``. A running attempt is recorded every
    :data:`CLOCK_BEAT_S` seconds, so one killed outright still counts up to its last record."""

    def __init__(self, path: Path, digest: str):
        self.path, self.digest = path, digest

    def attempts(self) -> list[float]:
        """The recorded attempts of these settings (none when the file is absent, unreadable or of other settings)."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        if "attempts_s" not in saved:  # written before attempts were summed: the one timed attempt
            return [saved["wall_s"]] if "wall_s" in saved else []
        return list(saved["attempts_s"]) if saved.get("digest") == self.digest else []

    def total(self) -> float:
        """Seconds of every recorded attempt together (NaN when none is recorded)."""
        recorded = self.attempts()
        return sum(recorded) if recorded else float("nan")

    @contextmanager
    def attempt(self, fresh: bool) -> Iterator[None]:
        """Time one attempt; ``fresh`` when the stage starts from nothing (earlier attempts then no longer count)."""
        before, start, stop = ([] if fresh else self.attempts()), time.perf_counter(), threading.Event()

        def record() -> None:
            atomic_write_text(self.path, json.dumps({"digest": self.digest,
                                                     "attempts_s": [*before, time.perf_counter() - start]}))

        def beat() -> None:
            while not stop.wait(CLOCK_BEAT_S):
                record()

        record()
        beating = threading.Thread(target=beat, name=f"clock {self.path.name}", daemon=True)
        beating.start()
        try:
            yield
        finally:
            stop.set()
            beating.join()
            record()


class Driver:
    """Runs plans stage by stage, skipping committed stages; one log line per finished stage."""

    def __init__(self, spec: StudySpec, replace_stale: bool = False, log: Callable[[str], None] = tqdm.write):
        self.spec, self.replace_stale, self.log = spec, replace_stale, log
        self.bar: Optional[tqdm] = None

    # -- status
    def pending(self, plan: RunPlan, formats: Optional[Iterable[str]] = None) -> list[str]:
        """Stages of ``plan`` left to do (of ``formats`` only, when given): ``train`` (only when an evaluation left
        needs the adapter, or the adapter is ready but its stage is not committed), then ``eval-<format>``.
        Committed stages with other settings raise :class:`StudyError` unless ``replace_stale``."""
        todo, stale = [], []
        for fmt, Pe in plan.evals.items():
            if formats is not None and fmt not in formats:
                continue
            folder = stage_dir(self.spec, plan.key, f"eval-{fmt}")
            state = stage_state(folder, settings_digest(Pe, "evaluate", plan.train), Pe)
            if state == "stale" and not self.replace_stale:
                stale.append(f"{_rel(folder)} ({', '.join(stale_keys(folder, Pe)) or 'training settings'})")
            if state != "done":
                todo.append(f"eval-{fmt}")
        if plan.train is not None and todo:
            folder = stage_dir(self.spec, plan.key, "train")
            state = stage_state(folder, settings_digest(plan.train, "train"), plan.train)
            if state == "stale" and not self.replace_stale:
                stale.append(f"{_rel(folder)} ({', '.join(stale_keys(folder, plan.train))})")
            if state != "done" or not self._adapter_ready(plan.train):
                todo.insert(0, "train")
        if stale:
            raise StudyError("committed outputs were made with other settings:\n  " + "\n  ".join(stale) + "\nFix: "
                             "restore those settings, or pass --replace-stale to redo these stages (the old "
                             "outputs are replaced when the new ones are committed).")
        return todo

    @staticmethod
    def _adapter_ready(P: Params) -> bool:
        """Whether ``runs/<run>/adapter`` holds a finished adapter trained with ``P``'s settings."""
        saved = P.run_dir / "adapter" / "coin_params.yaml"
        if not (P.run_dir / "adapter" / "adapter_model.safetensors").is_file() or not saved.is_file():
            return False
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        return _sections(validate({**old, "base": None}), "train") == _sections(P, "train")

    # -- stages
    def run_plan(self, plan: RunPlan, formats: Optional[Iterable[str]] = None) -> None:
        """Every pending stage of ``plan`` (of ``formats`` only, when given), training first."""
        for stage in self.pending(plan, formats):
            if stage == "train":
                self._train(plan)
            else:
                self._evaluate(plan, stage.removeprefix("eval-"))

    def _train(self, plan: RunPlan) -> None:
        from transformers import set_seed

        P = plan.train
        digest = settings_digest(P, "train")
        clock_file = P.run_dir / "study_train.json"
        callbacks = []
        if self.spec.commit_progress:
            progress = stage_dir(self.spec, plan.key, PROGRESS)
            restored = restore_progress(progress, digest, P.run_dir / "checkpoints", clock_file)
            if restored is not None:
                self.log(f"[study] {plan.key}: resuming from the committed {_rel(progress)} ({restored.name})")
            callbacks.append(ProgressKeeper(progress, digest, clock_file))
        clock = StageClock(clock_file, digest)  # made the local adapter
        if not self._adapter_ready(P):
            with clock.attempt(fresh=not any((P.run_dir / "checkpoints").glob("checkpoint-*"))):
                set_seed(P.run.seed)  # LoRA initialisation and dropout follow run.seed
                train(P, callbacks=callbacks)
        wall = clock.total()
        folder = stage_dir(self.spec, plan.key, "train")
        files: dict[str, Path | str] = {"params.yaml": _params_yaml(P)}
        if (P.run_dir / "train_log.csv").is_file():
            files["train_log.csv"] = P.run_dir / "train_log.csv"
        commit_stage(folder, files, _meta(settings_digest(P, "train"), wall, str(P.run_dir / "adapter"),
                                          self._command(plan), P))
        self._done(plan.key, "train", wall, folder)

    def _evaluate(self, plan: RunPlan, fmt: str) -> None:
        Pe = plan.evals[fmt]
        clock = StageClock(Pe.run_dir / "study_eval.json", settings_digest(Pe, "evaluate", plan.train))
        with clock.attempt(fresh=not any((Pe.run_dir / "eval" / "cache").rglob("*.parquet"))):
            run_evaluation(Pe, rank=0, world_size=1)
        wall = clock.total()
        out = Pe.run_dir / "eval"
        folder = stage_dir(self.spec, plan.key, f"eval-{fmt}")
        adapter = str(plan.train.run_dir / "adapter") if plan.train is not None else None
        commit_stage(folder, {"params.yaml": _params_yaml(Pe), "summary.csv": out / "summary.csv",
                              "predictions.parquet": out / "predictions.parquet"},
                     _meta(settings_digest(Pe, "evaluate", plan.train), wall, adapter, self._command(plan, fmt), Pe))
        self._done(plan.key, f"eval-{fmt}", wall, folder)

    def _command(self, plan: RunPlan, fmt: Optional[str] = None) -> str:
        src = self.spec.source or "SPEC"
        parts = ["python -m coinlib.results.study", _rel(src)]
        if plan.train is None:
            parts.append("--base-only")
        else:
            parts += ["--arms", plan.arm, "--seeds", str(plan.seed), "--no-base"]
        if fmt:
            parts += ["--formats", fmt]
        return " ".join(parts)

    def _done(self, key: str, stage: str, wall: float, folder: Path) -> None:
        if self.bar is not None:
            self.bar.update(1)
        self.log(f"[study] {key} {stage} finished in {wall:.0f} s -> {_rel(folder)}")

    def gate(self) -> GateDecision:
        g = self.spec.gate
        folder = stage_dir(self.spec, f"{g.arm}-s{g.seed}", f"eval-{g.format}")
        if not (folder / "summary.csv").is_file():
            raise StudyError(f"the pilot's {g.format}-format evaluation is not committed ({folder}); run --only pilot")
        fix = f"in {_rel(self.spec.params_path)} "
        return gate_decision(pd.read_csv(folder / "summary.csv"), g, str(folder), fix)


def run_study(spec: StudySpec, only: Optional[str] = None, arms: Optional[list[str]] = None,
              seeds: Optional[list[int]] = None, formats: Optional[list[str]] = None, base_model: bool | None = None,
              ignore_gate: bool = False, replace_stale: bool = False,
              log: Callable[[str], None] = tqdm.write) -> int:
    """The pilot and the gate first (unless ``ignore_gate``), then every other planned stage not yet committed.

    ``only="pilot"``: the pilot alone. Returns 0 when done, :data:`GATE_FAILED` when the gate stopped the study.
    """
    warn_if_git_ignored(spec, log)
    driver = Driver(spec, replace_stale, log)
    pilot = pilot_plan(spec)
    plans = [] if only == "pilot" else expand(spec, arms, seeds, formats, base_model)
    gate_first = not ignore_gate or only == "pilot"
    total = (len(driver.pending(pilot)) if gate_first else 0) + sum(
        len(driver.pending(p)) for p in plans if not (gate_first and p.key == pilot.key))
    with tqdm(total=total, desc=f"study {spec.name}", unit="stage", dynamic_ncols=True) as bar:
        driver.bar = bar
        if gate_first:
            driver.run_plan(pilot, [spec.gate.format])
            decision = driver.gate()
            log(f"[study] {decision.message}")
            if not decision.passed and not ignore_gate:
                return GATE_FAILED
            if only == "pilot":
                driver.run_plan(pilot)
        for plan in plans:
            driver.run_plan(plan)
    return 0


# ------------------------------------------------------------------------------------------------ report
def committed_runs(spec: StudySpec) -> pd.DataFrame:
    """Every run x format of the spec (and any other seed found committed): status, wall times, headline metrics."""
    root = spec.committed_dir / "runs"
    keys = [(BASE_KEY, BASE_KEY, None)] if spec.base_model else []
    found = {p.name for p in root.iterdir()} if root.is_dir() else set()
    for arm in spec.arms:
        extra = sorted(int(m.group(1)) for k in found if (m := re.fullmatch(rf"{re.escape(arm)}-s(\d+)", k)))
        keys += [(f"{arm}-s{s}", arm, s) for s in sorted(set(spec.seeds) | set(extra))]
    rows = []
    for key, arm, seed in keys:
        train_meta = _read_meta(root / key / "train")
        log = root / key / "train" / "train_log.csv"
        steps = int(pd.read_csv(log)["step"].max()) if log.is_file() else None
        for fmt in spec.formats:
            folder = root / key / f"eval-{fmt}"
            meta = _read_meta(folder)
            row = dict(run=key, arm=arm, seed=seed, format=fmt, status="done" if meta else "not run",
                       steps=steps, train_s=train_meta.get("wall_s"), eval_s=meta.get("wall_s"))
            if meta:
                row.update(_headline(pd.read_csv(folder / "summary.csv")))
            rows.append(row)
    return pd.DataFrame(rows)


def stage_times(spec: StudySpec) -> dict[str, float]:
    """Median wall seconds of the committed stages of each kind (``train``, ``eval-<format>``): the --plan estimate."""
    times: dict[str, list[float]] = {}
    for meta in sorted((spec.committed_dir / "runs").glob("*/*/stage.json")):
        wall = _read_meta(meta.parent).get("wall_s")
        if isinstance(wall, (int, float)) and wall > 0:
            times.setdefault(meta.parent.name, []).append(float(wall))
    return {kind: float(pd.Series(v).median()) for kind, v in times.items()}


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / "stage.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _headline(summary: pd.DataFrame) -> dict[str, float]:
    """Averages over tasks and groups of a summary (flip rates over the perturbed groups); clean calibrated accuracy."""
    clean = summary[summary["group"] == "clean"]
    return dict(acc=summary["mean_acc"].mean(), cal_acc=summary["cal_acc"].mean(), auc=summary["auc"].mean(),
                std_cal_acc=summary["std_cal_acc"].mean(), flip_rate_cal=summary["flip_rate_cal"].mean(),
                clean_cal_acc=clean["cal_acc"].mean())


def load_committed_predictions(spec: StudySpec, key: str, fmt: str, label: str) -> Optional[pd.DataFrame]:
    """A committed evaluation's predictions with the model relabelled ``label`` (None when not committed)."""
    path = spec.committed_dir / "runs" / key / f"eval-{fmt}" / "predictions.parquet"
    return pd.read_parquet(path).assign(model=label) if path.is_file() else None


def per_seed_comparisons(spec: StudySpec, runs: pd.DataFrame) -> pd.DataFrame:
    """Paired bootstrap (:func:`coinlib.evaluate.compare.paired_bootstrap`) of each arm against the reference within
    each seed and format, in :func:`coinlib.evaluate.compare.long_format` rows with ``format, arm, reference, seed``."""
    parts = []
    done = runs[runs["status"] == "done"]
    for fmt in spec.formats:
        for arm in (a for a in spec.arms if a != spec.reference):
            seeds = sorted(set(done.loc[(done.arm == arm) & (done.format == fmt), "seed"])
                           & set(done.loc[(done.arm == spec.reference) & (done.format == fmt), "seed"]))
            for seed in seeds:
                both = [load_committed_predictions(spec, f"{a}-s{int(seed)}", fmt, a) for a in (arm, spec.reference)]
                paired = paired_bootstrap(pd.concat(both, ignore_index=True), arm, spec.reference, spec.n_boot, seed=0)
                parts.append(long_format(paired).assign(format=fmt, arm=arm, reference=spec.reference, seed=int(seed)))
    columns = ["format", "arm", "reference", "seed", "group", "metric", "a", "b", "diff", "diff_low", "diff_high", "se"]
    return pd.concat(parts, ignore_index=True)[columns] if parts else pd.DataFrame(columns=columns)


def write_report(spec: StudySpec) -> dict[str, pd.DataFrame]:
    """Tables (CSV + Markdown) and the figure of the study from its committed outputs, into ``spec.committed_dir``."""
    from coinlib.results import plots, tables

    runs = committed_runs(spec)
    per_seed = per_seed_comparisons(spec, runs)
    across = across_seeds(per_seed, alpha=spec.alpha, power=spec.power) if len(per_seed) else pd.DataFrame()
    out = spec.committed_dir
    labels = {a: s.label for a, s in spec.arms.items()}
    plots.save_table(runs, out, "study_runs")
    plots.save_table(per_seed, out, "study_per_seed")
    plots.save_table(across, out, "study_across_seeds")
    markdown = tables.study_markdown(runs, per_seed, across, labels, spec.alpha, spec.power)
    atomic_write_text(out / "study.md", markdown)
    if len(per_seed):
        for fmt in sorted(set(per_seed["format"])):
            fig = plots.plot_seed_differences(per_seed[per_seed.format == fmt], across[across.format == fmt], labels)
            plots.save_figure(fig, per_seed[per_seed.format == fmt], out, f"seed_differences_{fmt}")
            plots.plt.close(fig)
    return {"runs": runs, "per_seed": per_seed, "across": across}


_rel = repo_relative


# ------------------------------------------------------------------------------------------------ command line
def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="study spec (YAML)")
    ap.add_argument("--only", choices=["pilot"], help="only the pilot run and the go/no-go gate")
    ap.add_argument("--arms", nargs="+", help="subset of the arms")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the spec's)")
    ap.add_argument("--formats", nargs="+", choices=FORMATS, help="subset of the input formats")
    ap.add_argument("--no-base", action="store_true", help="skip the base-model evaluation")
    ap.add_argument("--base-only", action="store_true", help="only the base-model evaluation")
    ap.add_argument("--ignore-gate", action="store_true", help="run everything even if the pilot misses the gate")
    ap.add_argument("--replace-stale", action="store_true", help="redo stages committed with other settings")
    ap.add_argument("--plan", action="store_true", help="print every stage and whether it is done; run nothing")
    ap.add_argument("--report", action="store_true", help="only write the tables and figure from committed outputs")
    ap.add_argument("--print-params", metavar="RUN[:FORMAT]", help="print a run's parameters (e.g. coin-s1:train)")
    add_set_argument(ap)
    args = ap.parse_args(list(argv) if argv is not None else None)
    try:
        spec = load_spec(args.spec, args.sets)
        base = False if args.no_base else (True if args.base_only else None)
        if args.print_params:
            key, _, fmt = args.print_params.partition(":")
            plan = next((p for p in expand(spec, seeds=sorted(set(spec.seeds) | set(args.seeds or [])))
                         if p.key == key), None)
            if plan is None:
                raise StudyError(f"no run {key!r}; runs look like {spec.reference}-s{spec.seeds[0]} or {BASE_KEY}")
            P = plan.evals[fmt] if fmt else plan.train
            if P is None:
                raise StudyError(f"{key} is not trained; give a format, e.g. {key}:{spec.formats[0]}")
            print(_params_yaml(P), end="")
            return 0
        arms = [] if args.base_only else args.arms
        if args.plan:
            warn_if_git_ignored(spec, print)
            driver = Driver(spec, args.replace_stale)
            typical, left = stage_times(spec), 0.0
            for plan in expand(spec, arms, args.seeds, args.formats, base):
                todo = driver.pending(plan)
                need = sum(typical.get(stage, 0.0) for stage in todo)
                left += need
                print(f"{plan.key:16s} {'done' if not todo else 'to do: ' + ', '.join(todo)}"
                      + (f" (about {need / 60:.0f} min)" if need else ""))
            if left:
                print(f"time left: about {left / 3600:.1f} h (the median wall time of each committed stage kind, "
                      "on the machines that made them)")
            return 0
        status = 0
        if not args.report:
            status = run_study(spec, args.only, arms, args.seeds, args.formats, base, args.ignore_gate,
                               args.replace_stale)
        if (spec.committed_dir / "runs").is_dir():
            write_report(spec)
            print(f"[study] report: {_rel(spec.committed_dir / 'study.md')}")
        return status
    except StudyError as exc:
        print(f"[study] error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
