"""Robustness evaluation (paper section 4.3): every model x GLUE task x instruction group x instruction.

    python -m coinlib.evaluate params/smoke.yaml            # one process
    torchrun --nproc-per-node 2 -m coinlib.evaluate params/smoke.yaml   # sharded (RANK / WORLD_SIZE)
    python -m coinlib.evaluate params/smoke.yaml --merge    # build the tables from what is cached

The work is split into units, one per (model, task, group, instruction); each unit's predictions are written
atomically to ``<run>/eval/cache/<settings>/...`` as soon as it is done, so an interrupted run resumes where it
stopped and never duplicates rows. With ``WORLD_SIZE`` > 1 each rank evaluates every ``WORLD_SIZE``-th unit;
rank 0 then merges all units into ``predictions.parquet`` (+ ``.csv``) and ``summary.csv``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import pandas as pd
from tqdm import tqdm

from coinlib.core.fileio import atomic_write
from coinlib.core.params import add_set_argument, load_params_or_exit
from coinlib.core.promptsets import load_prompt_set, select
from coinlib.core.sources import repo_relative
from coinlib.core.tasks import get_task, load_task
from coinlib.evaluate.metrics import BASE_LABEL, summarize

if TYPE_CHECKING:
    from coinlib.core.params import Params

log = logging.getLogger(__name__)

PREDICTION_COLUMNS = [
    "model", "adapter", "task", "group", "instruction_id", "instruction", "instance_id", "gold", "prediction",
    "correct", "raw_output", "label_scores", "label_tokens",
]
#: Version of what a cached unit holds and how it was scored, part of :func:`settings_key`: bumped when either
#: changes, so older units are evaluated afresh rather than misread. 2: ``label_tokens`` column; ``train``-format
#: rank scoring scores exactly the target training teaches (its EOS only with ``train.append_eos``).
CACHE_FORMAT = 2


class EvaluationError(RuntimeError):
    """Evaluation cannot proceed; the message names the problem and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: its label in the tables and the adapter folder applied to the base model (or None)."""

    label: str
    adapter: str | None


@dataclass(frozen=True)
class Unit:
    """The smallest cached piece of work: one instruction of one group and task, for one model."""

    model: str
    task: str
    group: str
    instruction_id: int
    instruction: str = ""
    weights: str = "base"  # digest of the model's adapter weights
    task_digest: str = ""  # digest of the task's registry entry (coinlib.core.tasks.EvalTask.digest)
    rows_digest: str = ""  # digest of the task's sampled rows (:func:`rows_digest`)

    def path(self, cache: Path) -> Path:
        """Cache file, named by the adapter weights', the task definition's, the sampled rows' and the instruction
        text's digests, so a retrained adapter, a changed task (sample, accepted answers), other data under the same
        name (a re-copied mirror, a new hub revision) or an edited prompt set never reuses a result, and adding a
        model to the list keeps the others' results."""
        digest = hashlib.sha256(self.instruction.encode()).hexdigest()[:10]
        model_dir = f"{self.model}-{self.weights}"
        task_dir = "-".join(part for part in (self.task, self.task_digest, self.rows_digest) if part)
        return cache / model_dir / task_dir / self.group / f"{self.instruction_id:03d}-{digest}.parquet"


@dataclass
class EvalTables:
    predictions: pd.DataFrame
    summary: pd.DataFrame


# ------------------------------------------------------------------------------------------------ plan
def model_specs(P: "Params") -> list[ModelSpec]:
    """Base model (if ``evaluate.include_base``) then each adapter: a run name (``runs/<name>/adapter``) or a folder."""
    specs = [ModelSpec(BASE_LABEL, P.model.adapter)] if P.evaluate.include_base else []
    for entry in P.evaluate.adapters:
        run_adapter = P.run_dir.parent / entry / "adapter"
        folder = Path(entry).expanduser()
        if run_adapter.is_dir():
            specs.append(ModelSpec(entry, str(run_adapter)))
        elif (folder / "adapter_config.json").is_file():
            specs.append(ModelSpec(folder.resolve().name, str(folder.resolve())))
        else:
            raise EvaluationError(
                f"adapter {entry!r} not found: neither {run_adapter} nor a folder with adapter_config.json. "
                f"Fix: train it first (notebooks/02_train.ipynb with run.name: {entry}) or give an adapter folder."
            )
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels) or not specs:
        raise EvaluationError(f"models to evaluate must be >= 1 with distinct labels, got {labels}. "
                              "Fix: evaluate.include_base / evaluate.adapters.")
    return specs


def plan_units(specs: list[ModelSpec], prompts: dict[str, dict[str, list[str]]],
               data: dict[str, pd.DataFrame] | None = None) -> list[Unit]:
    """Every unit, in a fixed order (model, task, group, instruction); ``data`` (task -> sampled rows) keys each
    unit on the rows it is scored on."""
    tasks = next(iter(prompts.values())).keys()
    weights = {m.label: weights_digest(m.adapter) or "base" for m in specs}
    rows = {t: rows_digest(data[t]) if data else "" for t in tasks}
    return [Unit(m.label, t, g, i, text, weights[m.label], get_task(t).digest, rows[t]) for m in specs for t in tasks
            for g in prompts for i, text in enumerate(prompts[g][t])]


def rows_digest(frame: pd.DataFrame) -> str:
    """Digest of a task sample's rows (ids, content, gold answers, in order): other data under the same task name
    gives another digest."""
    rows = frame[["instance_id", "content", "gold"]].astype(str).values.tolist()
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:10]


def shard(units: list[Unit], rank: int, world_size: int) -> list[Unit]:
    """This rank's units: every ``world_size``-th, starting at ``rank`` (disjoint, together complete)."""
    if not 0 <= rank < world_size:
        raise EvaluationError(f"rank {rank} outside world size {world_size}; check RANK and WORLD_SIZE")
    return units[rank::world_size]


def dist_env() -> tuple[int, int]:
    """``(rank, world_size)`` from the variables torchrun and accelerate set; ``(0, 1)`` otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def settings_key(P: "Params") -> str:
    """Short hash of the settings shared by every model that change a prediction; cached units live under it, so
    changed settings start fresh (each model's adapter weights key its own folder, see :meth:`Unit.path`)."""
    e, m = P.evaluate, P.model
    fields = dict(cache_format=CACHE_FORMAT, model=m.name, revision=m.revision, dtype=m.dtype,
                  load_in_4bit=m.load_in_4bit, n=e.n_per_task,
                  fmt=e.input_format, scoring=e.scoring, max_new_tokens=e.max_new_tokens,
                  append_eos=P.train.append_eos if e.input_format == "train" else None)
    if e.sample != "shared":  # another sample never reuses a shared-sample unit (shared keys stay as they were)
        fields["sample"] = e.sample
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def weights_digest(adapter: str | None) -> str | None:
    """Digest of an adapter's weights, so a retrained adapter in the same folder is evaluated afresh."""
    if not adapter:
        return None
    h = hashlib.sha256()
    for f in sorted(Path(adapter).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:12]


def eval_dir(P: "Params") -> Path:
    return P.run_dir / "eval"


# ------------------------------------------------------------------------------------------------ run
def run_evaluation(P: "Params", rank: int | None = None, world_size: int | None = None,
                   scorer: Callable | None = None) -> EvalTables | None:
    """Evaluate this process's shard, then (rank 0) merge every unit and write the tables.

    Returns the merged tables on rank 0, None on other ranks. ``scorer`` replaces
    :func:`coinlib.evaluate.scoring.score_instruction` (tests).
    """
    env_rank, env_world = dist_env()
    rank, world_size = (env_rank if rank is None else rank), (env_world if world_size is None else world_size)
    specs, units, cache, data = _plan(P)
    mine = [u for u in shard(units, rank, world_size) if read_unit(u.path(cache)) is None]
    if mine:
        _evaluate_units(P, mine, specs, data, cache, rank, scorer)
    if world_size > 1:
        _wait_for_shards(units, cache, rank)
        if rank != 0:
            return None
    return merge(P, units, cache)


def _plan(P: "Params") -> tuple[list[ModelSpec], list[Unit], Path, dict[str, pd.DataFrame]]:
    """The models, every unit of work, the cache folder and the sampled rows of each task of the evaluation ``P``
    describes."""
    e = P.evaluate
    prompts = select(load_prompt_set(e.prompt_set, P.run.mirror), e.groups, e.tasks, e.n_instructions)
    specs = model_specs(P)
    data = {t: load_task(t, e.n_per_task, P.run.mirror, e.sample) for t in e.tasks}
    return specs, plan_units(specs, prompts, data), eval_dir(P) / "cache" / settings_key(P), data


def _evaluate_units(P, units, specs, data, cache, rank, scorer) -> None:
    from coinlib.evaluate.scoring import score_instruction  # imports torch: only when something is evaluated

    scorer = scorer or score_instruction
    e = P.evaluate
    total = sum(len(data[u.task]) for u in units)
    by_model = {s.label: s for s in specs}
    with tqdm(total=total, unit="inst", desc=f"evaluate[{rank}]", position=rank, dynamic_ncols=True) as bar:
        for label in dict.fromkeys(u.model for u in units):
            model, tokenizer = _load(P, by_model[label])
            for u in (u for u in units if u.model == label):
                bar.set_postfix_str(f"{u.model}/{u.task}/{u.group}/{u.instruction_id}")
                frame, instruction = data[u.task], u.instruction
                scored = scorer(model, tokenizer, instruction, frame["content"].tolist(), get_task(u.task),
                                fmt=e.input_format, mode=e.scoring, batch_size=e.batch_size,
                                max_new_tokens=e.max_new_tokens, early_stop=e.early_stop, progress=bar.update,
                                append_eos=P.train.append_eos)
                _write_unit(u, by_model[label], instruction, frame, scored, cache)


def _load(P: "Params", spec: ModelSpec):
    """The base model in eval mode, with ``spec``'s adapter applied (frozen) when it has one."""
    import torch

    from coinlib.core.models import load_model  # torch and transformers: only when a model is loaded

    device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    base, tokenizer = load_model(P.model.model_copy(update={"adapter": None}), device=device)
    if spec.adapter:
        from peft import PeftModel

        base = PeftModel.from_pretrained(base, spec.adapter, is_trainable=False)
    return base.eval(), tokenizer


def _write_unit(unit: Unit, spec: ModelSpec, instruction: str, frame: pd.DataFrame, scored, cache: Path) -> None:
    rows = pd.DataFrame({
        "model": unit.model, "adapter": repo_relative(spec.adapter) if spec.adapter else "",  # names no machine
        "task": unit.task, "group": unit.group,
        "instruction_id": unit.instruction_id, "instruction": instruction,
        "instance_id": frame["instance_id"].to_numpy(), "gold": frame["gold"].to_numpy(),
        "prediction": [s.prediction for s in scored], "raw_output": [s.raw_output for s in scored],
        "label_scores": [s.label_scores for s in scored],
        "label_tokens": [getattr(s, "label_tokens", "{}") for s in scored],
    })
    rows["correct"] = rows["prediction"] == rows["gold"]
    path = unit.path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: rows[PREDICTION_COLUMNS].to_parquet(tmp, index=False))


def read_unit(path: Path) -> pd.DataFrame | None:
    """A cached unit's predictions; None when absent, or when unreadable (then it is moved aside to
    ``<name>.unreadable`` with a warning naming it, so it is recomputed and never trusted)."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_parquet(path)
        if list(frame.columns) != PREDICTION_COLUMNS or frame.empty:
            raise ValueError(f"columns {list(frame.columns)}, {len(frame)} rows")
        return frame
    except Exception as exc:  # noqa: BLE001 (any damage: truncated, empty, foreign file)
        aside = path.with_name(path.name + ".unreadable")
        try:
            os.replace(path, aside)
        except OSError:  # another process moved or replaced it first
            pass
        log.warning("cached evaluation unit %s is unreadable (%s: %s); it is recomputed (moved to %s)",
                    path, type(exc).__name__, exc, aside.name)
        return None


def _wait_for_shards(units: list[Unit], cache: Path, rank: int, poll_s: float = 2.0) -> None:
    """Block until every unit is cached (a barrier when torch.distributed is initialised, else polling)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            return
    except ImportError:  # pragma: no cover
        pass
    if rank != 0:
        return
    while missing := [u for u in units if not u.path(cache).is_file()]:
        log.info("waiting for %d units from other ranks", len(missing))
        time.sleep(poll_s)


# ------------------------------------------------------------------------------------------------ merge
def merge(P: "Params", units: list[Unit] | None = None, cache: Path | None = None) -> EvalTables:
    """Concatenate every planned unit (each exactly once), write the predictions and summary tables atomically."""
    if units is None or cache is None:
        _, units, cache, _ = _plan(P)
    frames = [read_unit(u.path(cache)) for u in units]
    missing = [u for u, f in zip(units, frames) if f is None]
    if missing:
        raise EvaluationError(
            f"{len(missing)} of {len(units)} units have no results yet (first: {missing[0]}). "
            "Fix: run the evaluation (it resumes) before merging."
        )
    predictions = pd.concat(frames, ignore_index=True)
    summary = summarize(predictions, n_boot=P.evaluate.n_boot, seed=P.run.seed)
    out = eval_dir(P)
    atomic_write(out / "predictions.parquet", lambda tmp: predictions.to_parquet(tmp, index=False))
    atomic_write(out / "predictions.csv", lambda tmp: predictions.to_csv(tmp, index=False))
    atomic_write(out / "summary.csv", lambda tmp: summary.to_csv(tmp, index=False))
    log_to_tensorboard(P, summary)
    return EvalTables(predictions, summary)


#: Summary columns that are not metrics (identifiers and sizes): never logged to TensorBoard.
_NOT_METRICS = {"model", "task", "group", "n_instructions", "n_instances"}


def log_to_tensorboard(P: "Params", summary: pd.DataFrame) -> Path | None:
    """Every metric of ``summary`` as a scalar in the run's TensorBoard log (``<run>/tensorboard``, beside the training
    curves), tagged ``eval/<model>/<task>/<group>/<metric>`` at the run's last training step (its ``train_log.csv``;
    0 when it was not trained here). Only when ``train.report_to`` names tensorboard; returns the log folder."""
    if "tensorboard" not in P.train.report_to:
        return None
    from torch.utils.tensorboard import SummaryWriter

    train_log = P.run_dir / "train_log.csv"
    step = int(pd.read_csv(train_log)["step"].max()) if train_log.is_file() else 0
    log_dir = P.run_dir / "tensorboard"
    metrics = [c for c in summary.columns if c not in _NOT_METRICS]
    with SummaryWriter(log_dir=str(log_dir), filename_suffix=".eval") as writer:
        for row in summary.to_dict("records"):
            for metric in metrics:
                if pd.notna(row[metric]):
                    writer.add_scalar(f"eval/{row['model']}/{row['task']}/{row['group']}/{metric}", row[metric], step)
    return log_dir


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coinlib.evaluate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params_file")
    ap.add_argument("--merge", action="store_true", help="only merge cached units into the tables")
    add_set_argument(ap)
    args = ap.parse_args(list(argv) if argv is not None else None)
    P = load_params_or_exit(args.params_file, args.sets)
    tables = merge(P) if args.merge else run_evaluation(P)
    if tables is not None:
        print(tables.summary.to_string(index=False))
    return 0
