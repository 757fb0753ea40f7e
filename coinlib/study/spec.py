"""A study spec (YAML): arms x seeds x input formats over one recipe, validated; its expansion into training
runs and their evaluations (the command line and the rest: :mod:`coinlib.study.cli`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from coinlib.core.params import PARAMS_DIR, ParamsError, Params, deep_merge, parse_sets, read_yaml, sets_note, validate
from coinlib.core.formats import INPUT_FORMATS, InputFormat
from coinlib.core.paths import FIGURES_DIR, REPO_ROOT

BASE_KEY = "base"
FORMATS = INPUT_FORMATS


class StudyError(RuntimeError):
    """The study cannot proceed; the message names the problem and the fix."""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ArmSpec(_Spec):
    """One arm: a display label and overrides of the recipe's ``model``, ``data`` and ``train`` sections."""

    label: str
    compare_to: Optional[str] = Field(None, description="arm this arm is compared with (default: the spec's "
                                      "reference)")
    continues: Optional[str] = Field(None, description="arm whose adapter (same seed) this arm continues training; "
                                     "it is trained first when its adapter is not in runs/")
    model: dict[str, Any] = Field(default_factory=dict)
    data: dict[str, Any] = Field(default_factory=dict)
    train: dict[str, Any] = Field(default_factory=dict)


class GateSpec(_Spec):
    """Go/no-go: the pilot run must reach ``threshold`` on ``metric`` (a summary column) before the rest is spent."""

    arm: str = "cit"
    seed: int = 0
    format: InputFormat = "train"
    task: str = "sst2"
    group: str = "clean"
    metric: Literal["cal_acc", "auc", "mean_acc"] = "cal_acc"
    threshold: float = Field(0.75, ge=0.0, le=1.0)


class CheckpointSpec(_Spec):
    """Evaluations of every training run part-way, at fractions of ``train.max_steps`` (a metric-vs-step curve, and
    what an unfinished long run already says): the adapter is snapshot at each step (training pauses there) and
    evaluated in ``format`` with the recipe's evaluation, ``evaluate`` overriding some of it (e.g. fewer tasks)."""

    at: list[float] = Field(default_factory=list, description="fractions of train.max_steps, each in (0, 1)")
    arms: Optional[list[str]] = Field(None, description="arms evaluated part-way (None: every arm)")
    format: InputFormat = "train"
    evaluate: dict[str, Any] = Field(default_factory=dict, description="overrides of the evaluate section")

    @model_validator(mode="after")
    def _fractions(self) -> "CheckpointSpec":
        if any(not 0 < f < 1 for f in self.at):
            raise ValueError(f"checkpoints.at {self.at}: fractions of training strictly between 0 and 1")
        if {"adapters", "include_base", "input_format"} & set(self.evaluate):
            raise ValueError("checkpoints.evaluate cannot set adapters, include_base or input_format")
        return self


class EvalVariantSpec(_Spec):
    """Another evaluation of each run beside the main one (e.g. generate scoring, or every instance of a task): the
    recipe's evaluation with ``evaluate`` overriding part of it, stage ``eval-<format>-<variant name>``."""

    evaluate: dict[str, Any] = Field(min_length=1, description="overrides of the evaluate section")
    formats: Optional[list[InputFormat]] = Field(None, description="input formats (None: the spec's)")
    arms: Optional[list[str]] = Field(None, description="arms (None: every arm; the base model with base_model)")

    @model_validator(mode="after")
    def _no_identity(self) -> "EvalVariantSpec":
        if {"adapters", "include_base", "input_format"} & set(self.evaluate):
            raise ValueError("eval_variants: evaluate cannot set adapters, include_base or input_format")
        return self


class TrainGateSpec(_Spec):
    """Go/no-go on training: every arm at ``seed`` trains to fraction ``at`` of ``train.max_steps`` first; each one's
    generation loss (mean of the last quarter of logged steps against the first quarter) must fall by more than
    ``min_drop`` before the rest of training is spent."""

    at: Optional[float] = Field(None, gt=0, lt=1, description="fraction of train.max_steps; None: no training gate")
    seed: int = 0
    min_drop: float = Field(0.0, ge=0, lt=1, description="relative fall required")


class StudySpec(_Spec):
    """Arms x seeds x input formats over one recipe (module doc)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    params: str = Field(description="the recipe: a parameter file, relative to this file's folder or params/")
    arms: dict[str, ArmSpec]
    reference: str = Field("cit", description="arm every other arm is compared with (differences: arm - reference), "
                           "unless the arm names its own compare_to")
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    formats: list[InputFormat] = Field(default_factory=lambda: ["train", "paper"], min_length=1)
    base_model: bool = Field(True, description="also evaluate the untrained base model in every format")
    gate: GateSpec = Field(default_factory=GateSpec)
    checkpoints: CheckpointSpec = Field(default_factory=CheckpointSpec)
    eval_variants: dict[str, EvalVariantSpec] = Field(default_factory=dict, description="further evaluations of "
                                                      "every run by name, e.g. {generate: {evaluate: {scoring: "
                                                      "generate}}}")
    train_gate: TrainGateSpec = Field(default_factory=TrainGateSpec)
    committed_root: str = Field(FIGURES_DIR, description="committed outputs go to <committed_root>/<name>/")
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
        for what, arm in (("reference", self.reference), ("gate.arm", self.gate.arm),
                          *(("checkpoints.arms", a) for a in self.checkpoints.arms or [])):
            if arm not in self.arms:
                raise ValueError(f"{what} {arm!r} is not an arm (arms: {', '.join(self.arms)})")
        for name, v in self.eval_variants.items():
            if not re.fullmatch(r"[a-z0-9][a-z0-9_]*", name):
                raise ValueError(f"eval_variants name {name!r}: use lowercase letters, digits or '_'")
            for arm in v.arms or []:
                if arm not in self.arms and arm != BASE_KEY:
                    raise ValueError(f"eval_variants.{name}.arms: {arm!r} is not an arm (arms: {', '.join(self.arms)})")
        for arm, a in self.arms.items():
            if a.compare_to is not None and (a.compare_to not in self.arms or a.compare_to == arm):
                raise ValueError(f"arms.{arm}.compare_to {a.compare_to!r} is not another arm")
            if a.continues is not None and (a.continues not in self.arms or a.continues == arm
                                            or self.arms[a.continues].continues is not None):
                raise ValueError(f"arms.{arm}.continues {a.continues!r}: name another arm that does not itself "
                                 "continue one")
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


def reference_of(spec: StudySpec, arm: str) -> str:
    """The arm ``arm`` is compared with: its ``compare_to``, else the spec's ``reference``."""
    return spec.arms[arm].compare_to or spec.reference


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
    for name, v in spec.eval_variants.items():  # and every evaluation variant valid evaluation parameters
        eval_params(arm_params(spec, spec.reference, spec.seeds[0]), (v.formats or spec.formats)[0], None, name,
                    v.evaluate)
    return spec


@dataclass
class RunPlan:
    """One training run (``train`` None for the base model) and its evaluations by input format."""

    key: str
    arm: str
    seed: Optional[int]
    train: Optional[Params]
    evals: dict[str, Params] = field(default_factory=dict)
    #: Part-way evaluations by optimizer step (:attr:`StudySpec.checkpoints`), stage ``step<N>-<format>``.
    checkpoints: dict[int, Params] = field(default_factory=dict)

    def checkpoint_stage(self, step: int) -> str:
        return f"step{step}-{self.checkpoints[step].evaluate.input_format}"

    def checkpoint_stages(self) -> dict[str, int]:
        """Stage name -> step of every part-way evaluation."""
        return {self.checkpoint_stage(step): step for step in self.checkpoints}


def arm_params(spec: StudySpec, arm: str, seed: int) -> Params:
    """Training parameters of ``arm`` at ``seed``: the recipe with the arm's overrides, run ``<name>-<arm>-s<seed>``."""
    path = spec.params_path
    a = spec.arms[arm]
    overrides = {s: v for s, v in (("model", a.model), ("data", a.data), ("train", a.train)) if v}
    try:  # the recipe's own errors (syntax, a key given twice) as StudyError too
        recipe = deep_merge(read_yaml(path), parse_sets(spec.sets))
    except ParamsError as exc:
        raise StudyError(str(exc)) from None
    values = deep_merge(recipe, {**overrides, "run": {"name": f"{spec.name}-{arm}-s{seed}", "seed": seed}})
    if a.continues is not None:  # the continued run's adapter, as a path relative to the repository when it is
        base = arm_params(spec, a.continues, seed)
        adapter = base.run_dir / "adapter"
        values.setdefault("model", {})["adapter"] = str(
            adapter.relative_to(REPO_ROOT) if adapter.is_relative_to(REPO_ROOT) else adapter)
    try:
        return validate(values, f"{spec.source or 'study'}: arms.{arm} over {path}{sets_note(spec.sets)}", path.parent)
    except ParamsError as exc:
        raise StudyError(str(exc)) from None


def eval_params(P: Params, fmt: str, adapter: Optional[str], variant: str = "",
                overrides: Optional[dict[str, Any]] = None) -> Params:
    """Evaluation of ``adapter`` (a run name; None = the base model) in input format ``fmt``, as run
    ``<run>-eval-<fmt>`` (``<run>-eval-<fmt>-<variant>`` with the variant's ``overrides`` of the evaluate section)."""
    values = P.model_dump(by_alias=True, exclude={"base"})
    values["base"] = None
    values["run"]["name"] = f"{P.run.name}-eval-{fmt}" + (f"-{variant}" if variant else "")
    values["evaluate"].update(overrides or {})
    values["evaluate"].update(input_format=fmt, adapters=[adapter] if adapter else [], include_base=adapter is None)
    try:
        return validate(values, f"evaluation {values['run']['name']}")
    except ParamsError as exc:
        raise StudyError(str(exc)) from None


def run_evals(spec: StudySpec, arm: str, P: Params, adapter: Optional[str], formats: list[str]) -> dict[str, Params]:
    """A run's evaluations by stage key: ``<format>`` for the main one, ``<format>-<variant>`` for each of
    :attr:`StudySpec.eval_variants` that includes ``arm`` and the format."""
    evals = {f: eval_params(P, f, adapter) for f in formats}
    for name, v in spec.eval_variants.items():
        if v.arms is not None and arm not in v.arms:
            continue
        for f in formats:
            if v.formats is None or f in v.formats:
                evals[f"{f}-{name}"] = eval_params(P, f, adapter, name, v.evaluate)
    return evals


def stop_steps(P: Params, fractions: list[float]) -> list[int]:
    """The optimizer steps at ``fractions`` of ``train.max_steps`` (rounded, at least 1, before the last step)."""
    if not fractions:
        return []
    if P.train.max_steps <= 0:
        raise StudyError(f"{P.run.name}: part-way stops need train.max_steps > 0 (it is {P.train.max_steps}). "
                         "Fix: set train.max_steps, or remove checkpoints.at / train_gate.at from the study spec.")
    steps = sorted({max(1, round(f * P.train.max_steps)) for f in fractions})
    return [s for s in steps if s < P.train.max_steps]


def snapshot_name(P: Params, step: int) -> str:
    """Run name of the adapter snapshot of ``P`` at ``step``: ``runs/<run>-step<N>/adapter``."""
    return f"{P.run.name}-step{step}"


def checkpoint_evals(spec: StudySpec, arm: str, P: Params) -> dict[int, Params]:
    """The part-way evaluations of ``arm``'s training run ``P``: step -> evaluation of the snapshot
    ``<run>-step<N>`` (none when ``checkpoints.arms`` leaves the arm out)."""
    if spec.checkpoints.arms is not None and arm not in spec.checkpoints.arms:
        return {}
    c = spec.checkpoints
    return {step: eval_params(P, c.format, snapshot_name(P, step), f"step{step}", c.evaluate)
            for step in stop_steps(P, c.at)}


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
        plans.append(RunPlan(BASE_KEY, BASE_KEY, None, None, run_evals(spec, BASE_KEY, base, None, formats)))
    for seed in seeds:
        for arm in arms:
            P = arm_params(spec, arm, seed)
            plans.append(RunPlan(f"{arm}-s{seed}", arm, seed, P, run_evals(spec, arm, P, P.run.name, formats),
                                 checkpoint_evals(spec, arm, P)))
    return plans


def pilot_plan(spec: StudySpec) -> RunPlan:
    """The gate's run, its gate format evaluated first."""
    P = arm_params(spec, spec.gate.arm, spec.gate.seed)
    formats = [spec.gate.format, *[f for f in spec.formats if f != spec.gate.format]]
    return RunPlan(f"{spec.gate.arm}-s{spec.gate.seed}", spec.gate.arm, spec.gate.seed, P,
                   run_evals(spec, spec.gate.arm, P, P.run.name, formats), checkpoint_evals(spec, spec.gate.arm, P))
