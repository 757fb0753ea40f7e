"""Typed parameters shared by every notebook, with errors that name the file, the key and what is expected.

A parameter file is YAML with the top-level keys ``base``, ``run``, ``model``, ``data``, ``train``,
``evaluate`` and ``analysis``. ``base`` names the file it builds on (relative to ``params/``; default
``smoke.yaml``; ``null`` starts from the schema alone); its sections are deep-merged over the base's.
All six notebooks read the same file, so ``papermill NB out.ipynb -f params/X.yaml`` works for any of them.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from coinlib.core.fileio import DuplicateKeyError, load_yaml
from coinlib.core.formats import InputFormat
from coinlib.core.groups import EVAL_GROUPS, LEVELS
from coinlib.core.paths import FIGURES_DIR, PARAMS_DIR, REPO_ROOT, RUNS_DIR
from coinlib.core.sources import source_key
from coinlib.core.tasks import task_names

if TYPE_CHECKING:
    import argparse

DEFAULT_BASE = "smoke.yaml"
SECTIONS = ("run", "model", "data", "train", "evaluate", "analysis")
#: ``train.lr_scheduler`` values transformers accepts with the arguments training passes (warm-up and step count
#: only; ``reduce_lr_on_plateau`` and ``greedy`` need an evaluation strategy, the ``*_min_lr`` and
#: ``warmup_stable_decay`` schedules extra arguments).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
#: ``train.report_to`` values: transformers' reporting integrations (``[]`` reports nowhere).
REPORT_TO = ("tensorboard", "wandb", "azure_ml", "comet_ml", "mlflow", "neptune", "trackio", "codecarbon", "clearml",
             "dagshub", "flyte", "dvclive", "swanlab", "kubeflow")
#: A run name: one folder name below ``run.output_root`` (no separator, not ``.``/``..``, not empty).
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ParamsError(ValueError):
    """Invalid parameters: one message per problem, each naming where, which key, and what is expected."""


def _registered_task(name: str) -> str:
    if name not in task_names():
        close = difflib.get_close_matches(name, task_names(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"unknown evaluation task {name!r}; {hint}known: {', '.join(task_names())}. Fix: use one "
                         "of those, or register the task (coinlib.core.tasks.register) before loading the parameters.")
    return name


def _plain_name(name: str) -> str:
    if not PLAIN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r} is not a plain name: outputs go to <run.output_root>/<name>, so it "
                         "must be one folder name (letters, digits, '.', '_', '-'; starting with a letter or digit). "
                         "Fix: e.g. my-run.")
    return name


class _Section(BaseModel):
    # allow_inf_nan=False: every float is finite (`.inf` or `.nan` in YAML would otherwise pass every bound)
    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True, allow_inf_nan=False)


class RunParams(_Section):
    """Where outputs go and how randomness is seeded."""

    name: str = Field(description="run name: outputs go to <output_root>/<name>, figures to figures/<name>")
    seed: int = Field(0, ge=0, lt=2**32, description="seed for every random choice (sampling, shuffling, "
                      "initialisation); numpy's seeds are 0 <= seed < 2**32")
    output_root: str = Field(RUNS_DIR, description="folder (relative to the repository) for run outputs")
    figures_root: str = Field(FIGURES_DIR, description="folder (relative to the repository) for figures")
    mirror: Optional[str] = Field(
        "auto", description="local data mirror root; 'auto' = $COIN_DATA_MIRROR or ../shared/data; 'hub' = online"
    )

    _plain_name = field_validator("name")(lambda cls, v: _plain_name(v))


class LoraParams(_Section):
    r: int = Field(16, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


class ModelParams(_Section):
    """Which causal LM to load and how."""

    name: str = Field(description="model: alias (smollm2-135m-instruct), hub id, local folder or .gguf file")
    revision: Optional[str] = Field(None, description="hub revision (commit) of the model")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = Field(
        "float32", description="weights and matmul precision; auto = bfloat16 where this machine computes it natively "
        "(AMX-BF16/AVX512-BF16 CPU, bf16 GPU), else float32; resolved when the file is loaded, so run settings, "
        "caches and resumption see the dtype actually used")
    load_in_4bit: bool = Field(False, description="4-bit NF4 base weights (QLoRA) via bitsandbytes")
    trust_remote_code: bool = Field(False, description="allow model code from the hub (off by default)")
    adapter: Optional[str] = Field(None, description="existing LoRA adapter to continue training from")
    lora: LoraParams = Field(default_factory=LoraParams)
    gradient_checkpointing: bool = False

    @field_validator("dtype")
    @classmethod
    def _resolved_dtype(cls, v: str) -> str:
        if v != "auto":
            return v
        from coinlib.core.precision import resolve_dtype  # imports torch: only when asked to look at the hardware

        return resolve_dtype(v)


class DataParams(_Section):
    """The contrastive FLAN training set."""

    tasks: list[str] = Field(default_factory=lambda: ["all"], description="FLAN task names, or ['all']")
    size: int = Field(52002, ge=1, description="number of entries (original, positive, negative)")
    eval_prompt_sets: list[str] = Field(
        default_factory=lambda: ["coin_eval_prompts"], description="prompt sets checked for leakage into training"
    )
    replacement: bool = Field(
        False, description="reuse a task's instances once its pool is exhausted (offline mirror pools are small)"
    )
    task_caps: Literal["none", "table2", "table2-scaled"] = Field(
        "none", description="per-task entry cap: none; the paper's Table 2 counts; or table2-scaled, Table 2's "
        "proportions over the tasks that have data, scaled to data.size (needs data.replacement offline)"
    )
    eval_holdout: int = Field(
        300, ge=0, description="rows of the evaluation sample (coinlib.core.tasks, the one evaluate.sample names) "
        "kept out of training pools drawn from GLUE evaluation splits; must be >= evaluate.n_per_task "
        "(== with evaluate.sample: reference)"
    )
    seed_offset: int = Field(
        0, ge=0, description="the data sample and order follow run.seed + seed_offset (e.g. a fresh sample for a run "
        "that continues another run's adapter)"
    )
    extra_positive_levels: list[Literal[LEVELS]] = Field(
        default_factory=list, description="coinlib.perturb levels: per entry and level, one extra row whose positive "
        "is the entry's own template perturbed (beyond the paper); [] = template paraphrases only"
    )


class TrainParams(_Section):
    """COIN training (contrastive on) or the continual-instruction-tuning baseline (contrastive off)."""

    contrastive: bool = Field(True, description="False = CIT baseline (generation loss only)")
    lambda_: float = Field(1000.0, alias="lambda", gt=0, description="upper bound of the contrastive weight")
    temperature: float = Field(0.05, gt=0, description="InfoNCE temperature tau")
    balance: Literal["none", "grad_norm"] = Field(
        "none", description="beyond the paper: none = the paper's loss, one backward of L_ent + w * L_ctr; grad_norm = "
        "per optimizer step, the contrastive term's gradient (of w * L_ctr, over the trainable weights, summed over "
        "the step's micro-batches) is scaled by min(1, |g_ent| / |g_ctr|) so its norm is at most the generation "
        "gradient's, then added to it (before max_grad_norm clipping); logs balance_scale, grad_norm_gen, "
        "grad_norm_ctr; two backward passes per micro-batch; one process only; no effect with contrastive false")
    learning_rate: float = Field(1e-4, gt=0)
    batch_size: int = Field(64, ge=1, description="effective batch size in pairs (micro-batch x accumulation)")
    micro_batch_pairs: int = Field(2, ge=1, description="pairs per forward pass (per process)")
    batching: Literal["reference", "paired", "in_batch"] = Field(
        "reference", description="reference = the paper's code: micro-batches of 2 entries that are each other's hard "
        "negatives, kept in data order; InfoNCE over that micro-batch, no extra sequence forwarded; "
        "paired = each InfoNCE sees its own positive and its own forwarded hard negative; "
        "in_batch = every positive and negative of the micro-batch (and of all processes if gather) is a candidate")
    row_negatives: bool = Field(
        True, description="paired/in_batch: forward each entry's hard negative (same instruction, other instance); "
        "False = only the other entries of the micro-batch are negatives (no extra sequences; in_batch only)")
    group_by_task: bool = Field(True, description="in_batch: fill each micro-batch with entries of one task")
    shuffle: Optional[bool] = Field(
        None, description="shuffle micro-batches; null = the mode's default (reference: never, as the reference "
        "code keeps the data order; paired/in_batch: shuffled)")
    append_eos: bool = Field(
        False, description="append EOS to every training sequence (and pool its hidden state); the reference "
        "code appends none, so the pooled token is the last output token")
    truncation: Literal["right", "keep_target"] = Field(
        "right", description="sequences longer than cutoff_len: right = cut from the right as the reference code "
        "(the output may be cut); keep_target = keep the output and the response marker, drop the prompt's middle")
    gather_across_processes: bool = Field(
        False, description="in_batch with several processes: gather embeddings so other processes' rows are negatives")
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="optimizer steps (>= 1); -1 = from epochs")
    cutoff_len: int = Field(256, ge=8, description="max tokens per sequence")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up steps")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="warm-up as a share of the optimizer steps "
                                "(rounded up; the reference code warms up 10%); set this or warmup_steps")
    lr_scheduler: Literal[LR_SCHEDULERS] = Field(
        "linear", description=f"learning-rate schedule (transformers): {', '.join(LR_SCHEDULERS)}")
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="autocast; auto = from model.dtype (bfloat16 -> bf16, float16 -> fp16, else none)")
    logging_steps: int = Field(10, ge=1)
    save_steps: int = Field(200, ge=1)
    save_total_limit: Optional[int] = Field(3, ge=1, description="checkpoints kept (oldest deleted); null = all")
    report_to: list[Literal[REPORT_TO]] = Field(
        default_factory=lambda: ["tensorboard"], description="tensorboard (default), wandb (opt-in), or [] for none")
    analysis_runs: bool = Field(
        False, description="notebook 02 also trains the runs the analyses name, from these parameters: "
        "analysis.cit_run with contrastive off, analysis.coin_run and each analysis.lambda_runs run with its lambda "
        "(how smoke.yaml gets a CIT and a COIN run that differ)")


    @field_validator("max_steps")
    @classmethod
    def _steps(cls, v: int) -> int:
        if v != -1 and v < 1:
            raise ValueError(f"{v} is neither a number of optimizer steps (>= 1) nor -1 (steps from train.epochs). "
                             "Fix: set a positive count, or -1.")
        return v

    @model_validator(mode="after")
    def _one_warmup(self) -> "TrainParams":
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) and warmup_ratio ({self.warmup_ratio}) are both set. "
                             "Fix: set one of them (the other 0).")
        return self


class EvaluateParams(_Section):
    """Robustness evaluation on GLUE with instruction variants."""

    tasks: list[str] = Field(default_factory=task_names, min_length=1, description="evaluation tasks (coinlib.core.tasks)")
    n_per_task: int = Field(300, ge=1, description="instances sampled per task (all when fewer)")
    sample: Literal["shared", "reference"] = Field(
        "shared", description="which instances: shared = this project's fixed-seed sample (nested, the same for "
        "every model; coinlib.core.tasks.sample_indices); reference = the paper's code's own instances, Python's "
        "random.sample seeded 42 over each validation split in hub order (coinlib.core.tasks."
        "reference_sample_indices; the paper's instances only where the split is complete, i.e. with the hub or "
        "for sst2, cola, qnli, wnli, rte, mrpc offline); training then holds that sample out, so it needs "
        "data.eval_holdout == n_per_task")
    prompt_set: str = Field("coin_eval_prompts", description="prompt set name or path to a JSON/YAML file")
    groups: list[str] = Field(default_factory=lambda: list(EVAL_GROUPS))
    input_format: InputFormat = "paper"
    scoring: Literal["generate", "rank"] = "generate"
    max_new_tokens: int = Field(7, ge=1)
    batch_size: int = Field(16, ge=1)
    adapters: list[str] = Field(default_factory=list, description="run names or adapter folders to evaluate")
    include_base: bool = Field(True, description="evaluate the base model too")
    n_instructions: Optional[int] = Field(None, ge=1, description="first N instructions per group and task; None = all")
    early_stop: bool = Field(True, description="generate: stop once every answer is decided (same predictions)")
    n_boot: int = Field(1000, ge=1, description="bootstrap resamples for the 95% interval of the mean accuracy")


    _registered_tasks = field_validator("tasks")(lambda cls, v: [_registered_task(t) for t in v])


class AnalysisParams(_Section):
    """Representation, task-category and lambda analyses."""

    represent_task: str = Field("cola", description="evaluation task whose instances are represented (Figure 4)")
    represent_n: int = Field(300, ge=2, description="instances represented (the evaluation's own sample of the task)")
    represent_instruction: int = Field(0, ge=0, description="index of the instruction within each group")
    umap_neighbors: int = Field(15, ge=2, description="UMAP n_neighbors (capped at the number of points - 1)")
    cit_run: Optional[str] = Field(None, description="run name of the CIT model ('base' = the base model)")
    coin_run: Optional[str] = Field(None, description="run name of the COIN model")
    lambda_runs: dict[str, str] = Field(
        default_factory=dict, description="lambda value -> run name of the COIN model trained with it (Table 4 sweep)"
    )

    _registered_task = field_validator("represent_task")(lambda cls, v: _registered_task(v))
    _plain_names = field_validator("cit_run", "coin_run")(lambda cls, v: v if v is None else _plain_name(v))

    @field_validator("lambda_runs")
    @classmethod
    def _sweep(cls, v: dict[str, str]) -> dict[str, str]:
        for lam, name in v.items():
            try:
                ok = math.isfinite(float(lam)) and float(lam) > 0
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"key {lam!r} is not a finite lambda > 0. Fix: use e.g. '1000' or '1e8'.")
            _plain_name(name)
        return v


class Params(_Section):
    """All parameters of a run."""

    base: Optional[str] = None
    run: RunParams
    model: ModelParams
    data: DataParams = Field(default_factory=DataParams)
    train: TrainParams = Field(default_factory=TrainParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    analysis: AnalysisParams = Field(default_factory=AnalysisParams)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every section's defaults (as ``model_dump(by_alias=True)``); required keys (run.name, model.name) absent."""
        return {name: field.annotation.model_construct().model_dump(by_alias=True)
                for name, field in cls.model_fields.items() if name != "base"}

    # ------------------------------------------------------------------ derived paths
    @property
    def run_dir(self) -> Path:
        return _repo_path(self.run.output_root) / self.run.name

    @property
    def figures_dir(self) -> Path:
        return _repo_path(self.run.figures_root) / self.run.name

    @property
    def data_dir(self) -> Path:
        """Built data is shared by runs with the same data section, seed and source (CIT and COIN runs; any mirror
        folder is one source); the digest of the files read and the data format version are checked on load
        (``coinlib.data.pairs``), so a mirror with other files rebuilds it."""
        parts = [self.data.model_dump(), self.run.seed, source_key(self.run.mirror)]
        if self.evaluate.sample != "shared":  # the holdout follows the evaluation sample (keys unchanged for shared)
            parts.append({"eval_holdout_sample": self.evaluate.sample})
        key = json.dumps(parts, sort_keys=True)
        return _repo_path(self.run.output_root) / "data" / hashlib.sha256(key.encode()).hexdigest()[:12]

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(by_alias=True, exclude={"base"}), sort_keys=False)

    def runs_to_train(self) -> list["Params"]:
        """This run, then with ``train.analysis_runs`` each run the analyses name that is neither this run nor
        ``base``: ``analysis.cit_run`` (``train.contrastive`` off), ``analysis.coin_run`` and every
        ``analysis.lambda_runs`` run (contrastive on, ``train.lambda`` = its key); all else as here."""
        if not self.train.analysis_runs:
            return [self]
        a = self.analysis
        wanted: dict[str, dict[str, Any]] = {}
        if a.cit_run:
            wanted[a.cit_run] = {"contrastive": False}
        if a.coin_run:
            wanted.setdefault(a.coin_run, {"contrastive": True})
        for lam, name in a.lambda_runs.items():
            try:
                wanted.setdefault(name, {"contrastive": True, "lambda": float(lam)})
            except ValueError:
                raise ParamsError(f"analysis.lambda_runs: key {lam!r} is not a number; use e.g. '1000'") from None
        out = [self]
        for name, train in wanted.items():
            if name in ("base", self.run.name):
                continue
            values = self.model_dump(by_alias=True, exclude={"base"})
            values["run"]["name"] = name
            values["train"].update(train, analysis_runs=False)
            out.append(validate({"base": None, **values}, f"analysis run {name!r} derived from {self.run.name!r}"))
        return out


def _repo_path(p: str) -> Path:
    path = Path(p)
    return path if path.is_absolute() else REPO_ROOT / path


# ------------------------------------------------------------------------------------------- loading
def read_yaml(path: str | Path) -> dict[str, Any]:
    """Parse a parameter file; syntax errors and duplicate keys name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: parameter file not found. Fix: pass an existing file (see {PARAMS_DIR})")
    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except DuplicateKeyError as exc:
        raise ParamsError(str(exc)) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ParamsError(f"{path}:{where}: YAML syntax error: {problem}. Fix the file's syntax.") from exc
    if data is None or data == {}:
        raise ParamsError(
            f"{path}: the parameter file is empty. Fix: give at least `run: {{name: ...}}` (the settings not given "
            f"come from `base`, default {DEFAULT_BASE}), or pass params/{DEFAULT_BASE} itself for the smoke run."
        )
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
    return data


def _resolve_base(name: str, relative_to: Path | None) -> Path:
    p = Path(name)
    candidates = [p] if p.is_absolute() else [c / p for c in (relative_to, PARAMS_DIR) if c is not None]
    for c in candidates:
        if c.is_file():
            return c
    raise ParamsError(f"base file {name!r} not found (looked in {', '.join(str(c) for c in candidates)})")


def _merged_raw(values: dict[str, Any], where: str, relative_to: Path | None, seen: tuple[Path, ...] = ()) -> dict:
    """Deep-merge ``values`` over the chain of bases it names."""
    base = values.get("base", DEFAULT_BASE)
    if base is None:
        return {k: v for k, v in values.items() if k != "base"}
    base_path = _resolve_base(base, relative_to).resolve()
    if base_path in seen:
        raise ParamsError(f"{where}: base files form a cycle: {' -> '.join(str(s) for s in seen + (base_path,))}")
    parent = _merged_raw(read_yaml(base_path), str(base_path), base_path.parent, seen + (base_path,))
    return deep_merge(parent, {k: v for k, v in values.items() if k != "base"})


#: Mapping-valued keys a file gives in full: replaced, never merged with the base's (a sweep names all its runs).
REPLACED_WHOLE = {("analysis", "lambda_runs")}


def deep_merge(base: dict, override: dict, _path: tuple[str, ...] = ()) -> dict:
    """``override`` over ``base``, recursing into mappings (except the keys of :data:`REPLACED_WHOLE`)."""
    out = dict(base)
    for k, v in override.items():
        nested = isinstance(v, dict) and isinstance(out.get(k), dict) and (*_path, k) not in REPLACED_WHOLE
        out[k] = deep_merge(out[k], v, (*_path, k)) if nested else v
    return out


def validate(values: dict[str, Any], where: str = "parameters", relative_to: Path | None = None) -> Params:
    """Resolve bases and validate; raise :class:`ParamsError` listing every problem."""
    unknown = [k for k in values if k not in SECTIONS and k != "base"]
    if unknown:
        raise ParamsError("\n".join(_unknown_key_message(where, k, (*SECTIONS, "base")) for k in unknown))
    raw = _merged_raw(values, where, relative_to)
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ParamsError("\n".join(_describe(where, err) for err in exc.errors())) from None


def load_params(path: str | Path, sets: Sequence[str] = ()) -> Params:
    """Load and validate a parameter file, with command-line ``--set KEY=VALUE`` overrides (:func:`parse_sets`)
    merged over it, so they are validated exactly as the file's own values."""
    path = Path(path)
    values = deep_merge(read_yaml(path), parse_sets(sets))
    return validate(values, f"{path}{sets_note(sets)}", path.parent)


def load_params_or_exit(path: str | Path, sets: Sequence[str] = ()) -> Params:
    """:func:`load_params` for command-line entry points: invalid parameters exit with status 2 and the message."""
    try:
        return load_params(path, sets)
    except ParamsError as exc:
        print(f"[coin] invalid parameters:\n{exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ------------------------------------------------------------------------------------------- command line
def parse_sets(sets: Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` overrides (``--set``) as the nested mapping a parameter file would hold.

    The key is dotted (``train.lambda``, ``model.lora.r``); the value is read by PyYAML exactly as in a file
    (``10``, ``1.0e-3``, ``true``, ``null``, ``[sst2, rte]``, ``{"1": smoke-lambda1}``). Later overrides win.
    """
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE with a dotted key. Fix: e.g. --set train.lambda=10")
        try:
            value = load_yaml(text, f"--set {item!r}")
        except DuplicateKeyError as exc:
            raise ParamsError(str(exc)) from None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            raise ParamsError(f"--set {item!r}: the value of {key} is not valid YAML ({problem}). Fix: write it as "
                              "in a parameter file (a list as [a, b]; quote text YAML would misread).") from None
        node = out
        for depth, part in enumerate(parts[:-1], 1):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {item!r}: {'.'.join(parts[:depth])} is set to a value by an earlier --set, "
                                  "so it has no keys. Fix: drop one of the two.")
        node[parts[-1]] = value
    return out


def sets_note(sets: Sequence[str]) -> str:
    """`` with --set A --set B`` for messages (empty without overrides)."""
    return "".join(f" --set {s}" for s in sets).replace(" --set", " with --set", 1)


def add_set_argument(parser: "argparse.ArgumentParser") -> None:
    """The ``--set KEY=VALUE`` option of every command that reads a parameter file (values in ``args.sets``)."""
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override one setting of the file (dotted key, YAML value), validated like the file; "
                             "repeat as needed, e.g. --set train.lambda=10 --set evaluate.tasks=[sst2,rte]")


def notebook_params(namespace: dict[str, Any], where: str = "notebook parameters") -> Params:
    """Validate the variables of a notebook's ``parameters`` cell (and any papermill injected after it).

    Call it in the first cell after the parameters: any other plain-data global is reported as an
    unknown key, so a misspelt section in a ``-f`` file does not pass silently.

    The parameters cell may show its base file's values (``base = "smoke.yaml"``, ``train = {"lambda": 1000, ...}``)
    and record them in ``_shown`` (``_shown = {"base": base, "run": run, ...}``, one ``=`` per line so papermill
    parses the cell). When papermill injects another ``base`` (``papermill -f params/X.yaml``), the sections it did
    not inject (the very objects of ``_shown``) are dropped: they show the notebook's base, not X's.
    """
    plain = (dict, list, str, int, float, bool, type(None))
    ignored = {"In", "Out", "exit", "quit", "get_ipython"}
    values = {
        k: v for k, v in namespace.items()
        if not k.startswith("_") and k not in ignored and isinstance(v, plain)
    }
    shown = namespace.get("_shown")
    if isinstance(shown, dict) and values.get("base", DEFAULT_BASE) != shown.get("base", DEFAULT_BASE):
        values = {k: v for k, v in values.items() if k == "base" or k not in shown or v is not shown[k]}
    return validate(values, where)


# ------------------------------------------------------------------------------------------- messages
def _unknown_key_message(where: str, key: str, allowed: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(str(key).rsplit(".", 1)[-1], [str(a) for a in allowed], n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{where}: unknown key {key!r}{hint} Allowed here: {', '.join(map(str, allowed))}."


def _field_info(loc: tuple):
    """The pydantic field at a validation-error location (None past a non-model field)."""
    model: Any = Params
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", {})
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return None
        model = field.annotation
    return field


def _fields_at(loc: tuple) -> list[str]:
    """Key names allowed in the section at ``loc``."""
    model = _field_info(loc).annotation if loc else Params
    return [f.alias or n for n, f in getattr(model, "model_fields", {}).items()]


def _describe(where: str, err: dict) -> str:
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc)
    if err["type"] == "extra_forbidden":
        return _unknown_key_message(where, key, _fields_at(loc[:-1]))
    if err["type"] == "missing":
        field = _field_info(loc)
        desc = f" ({field.description})" if field is not None and field.description else ""
        return f"{where}: missing required key {key!r}{desc}. Fix: set it, or build on a base file that does."
    got = err.get("input")
    if err["type"] == "value_error":  # this module's own checks, whose messages name the value
        return f"{where}: {key}: {err['msg'].removeprefix('Value error, ')}"
    return f"{where}: {key}: {err['msg']}; got {got!r} ({type(got).__name__})."

