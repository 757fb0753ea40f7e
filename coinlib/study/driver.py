"""The driver: runs a study's stages (training, then one evaluation per input format), skipping committed
ones, timing each over its attempts; the pilot and its go/no-go gate first."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Collection, Iterable, Iterator, Optional

import pandas as pd
import yaml
from tqdm import tqdm
from transformers import TrainerCallback, set_seed

from coinlib.core.fileio import atomic_write_text
from coinlib.core.precision import precision_record
from coinlib.core.params import Params, validate
from coinlib.evaluate.runner import run_evaluation, weights_digest
from coinlib.study.checkpoints import (
    PauseAt,
    TrainingPaused,
    take_snapshot,
    gate_verdict,
    log_history,
    loss_trend,
    newest_step,
    snapshot_dir,
    snapshot_ready,
)
from coinlib.study.spec import GateSpec, RunPlan, StudyError, StudySpec, expand, pilot_plan, stop_steps
from coinlib.study.store import (
    PROGRESS,
    _params_yaml,
    _read_meta,
    _rel,
    _sections,
    commit_stage,
    restore_progress,
    save_progress,
    settings_digest,
    stage_dir,
    stage_state,
    stale_keys,
    warn_if_git_ignored,
)
from coinlib.train.trainer import train

GATE_FAILED = 3
#: Seconds between two records of a running attempt's wall time (what an attempt killed outright can leave uncounted).
CLOCK_BEAT_S = 10.0


class ProgressKeeper(TrainerCallback):
    """Commits the newest checkpoint after every save (:func:`save_progress`)."""

    def __init__(self, folder: Path, digest: str, clock: Path, P: Optional[Params] = None):
        self.folder, self.digest, self.clock, self.P = folder, digest, clock, P

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            save_progress(checkpoint, self.folder, self.digest, self.clock, self.P)



def _meta(digest: str, wall_s: float, adapter: Optional[str], command: str, P: Params) -> dict[str, Any]:
    return {"digest": digest, "wall_s": round(wall_s, 1), "finished_utc": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "adapter_digest": weights_digest(adapter) if adapter else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "command": command,
            "precision": precision_record(P.model.dtype)}



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
    def pending(self, plan: RunPlan, formats: Optional[Iterable[str]] = None,
                stages: Optional[Collection[str]] = None) -> list[str]:
        """Stages of ``plan`` left to do (of ``formats`` only, when given; of the evaluation ``stages`` only, when
        given): ``train`` (only when an evaluation left needs the adapter, or the adapter is ready but its stage is
        not committed, or a part-way evaluation left needs a snapshot not in ``runs/``), then ``eval-<format>``,
        then ``step<N>-<format>``. Committed stages with other settings raise :class:`StudyError` unless
        ``replace_stale``."""
        todo, stale = [], []
        for key, Pe in plan.evals.items():
            if (formats is not None and Pe.evaluate.input_format not in formats
                    or stages is not None and f"eval-{key}" not in stages):
                continue
            if self._eval_state(plan, f"eval-{key}", Pe, stale) != "done":
                todo.append(f"eval-{key}")
        finals_pending, snapshots_needed = bool(todo), False
        for step, Pc in plan.checkpoints.items():
            if formats is not None and Pc.evaluate.input_format not in formats:
                continue
            stage = plan.checkpoint_stage(step)
            if stages is not None and stage not in stages:
                continue
            if self._eval_state(plan, stage, Pc, stale) != "done":
                todo.append(stage)
                snapshots_needed |= not snapshot_ready(plan.train, step)
        if plan.train is not None and todo:
            folder = stage_dir(self.spec, plan.key, "train")
            state = stage_state(folder, settings_digest(plan.train, "train"), plan.train)
            if state == "stale" and not self.replace_stale:
                stale.append(f"{_rel(folder)} ({', '.join(stale_keys(folder, plan.train))})")
            if snapshots_needed or (finals_pending and (state != "done" or not self._adapter_ready(plan.train))):
                todo.insert(0, "train")
        if stale:
            raise StudyError("committed outputs were made with other settings:\n  " + "\n  ".join(stale) + "\nFix: "
                             "restore those settings, or pass --replace-stale to redo these stages (the old "
                             "outputs are replaced when the new ones are committed).")
        return todo

    def _eval_state(self, plan: RunPlan, stage: str, Pe: Params, stale: Optional[list[str]] = None) -> str:
        """:func:`stage_state` of an evaluation stage of ``plan``; a stale one is described in ``stale``."""
        folder = stage_dir(self.spec, plan.key, stage)
        state = stage_state(folder, settings_digest(Pe, "evaluate", plan.train), Pe)
        if state == "stale" and not self.replace_stale and stale is not None:
            stale.append(f"{_rel(folder)} ({', '.join(stale_keys(folder, Pe)) or 'training settings'})")
        return state

    @staticmethod
    def _adapter_ready(P: Params) -> bool:
        """Whether ``runs/<run>/adapter`` holds a finished adapter trained with ``P``'s settings."""
        saved = P.run_dir / "adapter" / "coin_params.yaml"
        if not (P.run_dir / "adapter" / "adapter_model.safetensors").is_file() or not saved.is_file():
            return False
        old = yaml.safe_load(saved.read_text(encoding="utf-8"))
        return _sections(validate({**old, "base": None}), "train") == _sections(P, "train")

    # -- stages
    def run_plan(self, plan: RunPlan, formats: Optional[Iterable[str]] = None, until: Optional[int] = None,
                 stages: Optional[Collection[str]] = None, part_way: Optional[bool] = None) -> bool:
        """Every pending stage of ``plan`` (of ``formats`` only, and of the evaluation ``stages`` only, when given),
        training first (its part-way evaluations at their steps when ``part_way``; default: unless ``stages`` leaves
        them out). ``until``: training pauses after that step (the training gate); returns False when it paused
        there, True when every stage is done."""
        steps = plan.checkpoint_stages()
        if part_way is None:
            part_way = stages is None or any(stage in stages for stage in steps)
        if "train" in self.pending(plan, formats, stages) and not self._train(plan, until, part_way):
            return False
        for stage in self.pending(plan, formats, stages):
            if stage in steps:
                self._evaluate_checkpoint(plan, steps[stage])
            elif stage.startswith("eval-"):
                self._evaluate(plan, stage.removeprefix("eval-"))
        return True

    def _snapshots_missing(self, plan: RunPlan) -> list[int]:
        """Steps whose part-way evaluation is not committed and whose snapshot is not in ``runs/``."""
        return [step for step, Pc in plan.checkpoints.items() if not snapshot_ready(plan.train, step)
                and self._eval_state(plan, plan.checkpoint_stage(step), Pc) != "done"]

    def _train(self, plan: RunPlan, until: Optional[int] = None, part_way: bool = True) -> bool:
        """Train ``plan`` to its end (True) or to step ``until`` (False), pausing at each missing snapshot's step to
        evaluate it. A snapshot whose step the local checkpoints have passed needs training from the start: the old
        run folder is kept beside it as ``<run>.replaced``. ``part_way`` False (the pilot trained for the gate
        alone): the missing snapshots ahead are taken without a pause, for their evaluations to run with the rest of
        that run; one already passed does not make it train again."""
        P = plan.train
        continued = self.spec.arms[plan.arm].continues
        if continued is not None:  # its starting adapter first
            start = next(p for p in expand(self.spec, [continued], [plan.seed], base_model=False))
            if not self._adapter_ready(start.train):
                self.log(f"[study] {plan.key} continues {start.key}: training {start.key} first")
                self._train(start)
        digest = settings_digest(P, "train")
        clock_file = P.run_dir / "study_train.json"
        callbacks: list[TrainerCallback] = []
        if self.spec.commit_progress:
            progress = stage_dir(self.spec, plan.key, PROGRESS)
            restored = restore_progress(progress, digest, P.run_dir / "checkpoints", clock_file, P)
            if restored is not None:
                self.log(f"[study] {plan.key}: resuming from the committed {_rel(progress)} ({restored.name})")
            callbacks.append(ProgressKeeper(progress, digest, clock_file, P))
        missing = self._snapshots_missing(plan)
        done = newest_step(P) if not self._adapter_ready(P) else P.train.max_steps
        if part_way and any(step < done for step in missing):
            aside = P.run_dir.with_name(P.run_dir.name + ".replaced")
            shutil.rmtree(aside, ignore_errors=True)
            P.run_dir.rename(aside)
            self.log(f"[study] {plan.key}: training passed step(s) {[s for s in missing if s < done]} without a "
                     f"snapshot; training again from the start (the old run folder is now {_rel(aside)})")
        elif done in missing:  # saved, then stopped before the snapshot was taken
            take_snapshot(P, P.run_dir / "checkpoints" / f"checkpoint-{done}")
            missing.remove(done)
        stops = sorted({*(missing if part_way else []), *([until] if until is not None else [])})
        snapshots_only = [] if part_way else [step for step in missing if step > done and step not in stops]
        clock = StageClock(clock_file, digest)  # made the local adapter
        finished = self._adapter_ready(P)
        while not finished:
            if until is not None and newest_step(P) >= until:
                return False
            remaining = [step for step in stops if step > newest_step(P)]
            try:
                with clock.attempt(fresh=not any((P.run_dir / "checkpoints").glob("checkpoint-*"))):
                    set_seed(P.run.seed)  # LoRA initialisation and dropout follow run.seed (resumption: the checkpoint's)
                    train(P, callbacks=[*callbacks, PauseAt(P, snapshots_only, pause=False), PauseAt(P, remaining)])
                finished = True
            except TrainingPaused as paused:
                self.log(f"[study] {plan.key}: paused after step {paused.step} "
                         f"(snapshot {_rel(snapshot_dir(P, paused.step))})")
                if part_way and paused.step in plan.checkpoints:
                    self._evaluate_checkpoint(plan, paused.step)
        wall = clock.total()
        folder = stage_dir(self.spec, plan.key, "train")
        files: dict[str, Path | str] = {"params.yaml": _params_yaml(P)}
        if (P.run_dir / "train_log.csv").is_file():
            files["train_log.csv"] = P.run_dir / "train_log.csv"
        before = _read_meta(folder).get("adapter_digest")
        meta = _meta(settings_digest(P, "train"), wall, str(P.run_dir / "adapter"), self._command(plan), P)
        if before and before != meta["adapter_digest"]:
            self.log(f"[study] {plan.key}: the adapter trained now differs from the one committed before "
                     f"({before[:12]} -> {meta['adapter_digest'][:12]}); its committed evaluations stay as they are")
        commit_stage(folder, files, meta)
        self._done(plan.key, "train", wall, folder)
        return True

    def _evaluate(self, plan: RunPlan, key: str) -> None:
        adapter = str(plan.train.run_dir / "adapter") if plan.train is not None else None
        self._evaluate_stage(plan, f"eval-{key}", plan.evals[key], adapter)

    def _evaluate_checkpoint(self, plan: RunPlan, step: int) -> None:
        self._evaluate_stage(plan, plan.checkpoint_stage(step), plan.checkpoints[step],
                             str(snapshot_dir(plan.train, step)))

    def _evaluate_stage(self, plan: RunPlan, stage: str, Pe: Params, adapter: Optional[str]) -> None:
        clock = StageClock(Pe.run_dir / "study_eval.json", settings_digest(Pe, "evaluate", plan.train))
        with clock.attempt(fresh=not any((Pe.run_dir / "eval" / "cache").rglob("*.parquet"))):
            run_evaluation(Pe, rank=0, world_size=1)
        wall = clock.total()
        out = Pe.run_dir / "eval"
        folder = stage_dir(self.spec, plan.key, stage)
        fmt = Pe.evaluate.input_format
        commit_stage(folder, {"params.yaml": _params_yaml(Pe), "summary.csv": out / "summary.csv",
                              "predictions.parquet": out / "predictions.parquet"},
                     _meta(settings_digest(Pe, "evaluate", plan.train), wall, adapter, self._command(plan, fmt), Pe))
        self._done(plan.key, stage, wall, folder)

    # -- the training gate
    def train_gate(self) -> GateDecision:
        """Every arm at ``train_gate.seed`` trained to the gate's step (or read from its committed log), then
        :func:`coinlib.study.checkpoints.gate_verdict`; the verdict is written to ``train_gate.txt``."""
        g = self.spec.train_gate
        trends = []
        for plan in expand(self.spec, seeds=[g.seed], base_model=False):
            P = plan.train
            step = stop_steps(P, [g.at])[0]
            committed = stage_dir(self.spec, plan.key, "train") / "train_log.csv"
            if stage_state(committed.parent, settings_digest(P, "train"), P) == "done" and committed.is_file():
                history = pd.read_csv(committed).to_dict("records")
            else:
                if newest_step(P) < step:
                    self.run_plan(plan, until=step)
                history = log_history(P, newest_step(P))
            try:
                trends.append(loss_trend(plan.key, step, history))
            except ValueError as exc:
                raise StudyError(str(exc)) from None
        passed, message = gate_verdict(trends, g.min_drop)
        atomic_write_text(self.spec.committed_dir / "train_gate.txt", message + "\n")
        return GateDecision(passed, min(t.drop for t in trends), message)

    def gate_pending(self, pilot: RunPlan, plans: list[RunPlan]) -> list[str]:
        """What the gate adds to a run of ``plans``: the pilot's :func:`gate_stages` left to do (and its training
        when they need it), less those the pilot's own plan among ``plans`` does anyway."""
        own = {stage for p in plans if p.key == pilot.key for stage in self.pending(p)}
        return [stage for stage in self.pending(pilot, stages=gate_stages(self.spec)) if stage not in own]

    def _command(self, plan: RunPlan, fmt: Optional[str] = None) -> str:
        src = self.spec.source or "SPEC"
        parts = ["python -m coinlib.study", _rel(src)]
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


def gate_stages(spec: StudySpec) -> list[str]:
    """The pilot's stages the gate reads: its evaluation in the gate's format (its training comes with it)."""
    return [f"eval-{spec.gate.format}"]


def study_plans(spec: StudySpec, only: Optional[str] = None, arms: Optional[list[str]] = None,
                seeds: Optional[list[int]] = None, formats: Optional[list[str]] = None, base_model: bool | None = None,
                ignore_gate: bool = False) -> tuple[Optional[RunPlan], list[RunPlan]]:
    """What :func:`run_study` runs: the pilot, for its :func:`gate_stages` alone (None when the gate does not come
    first), then the selected plans in full (the pilot's other stages only when it is among them)."""
    pilot = pilot_plan(spec)
    plans = [pilot] if only == "pilot" else expand(spec, arms, seeds, formats, base_model)
    return (pilot if not ignore_gate or only == "pilot" else None), plans


def run_study(spec: StudySpec, only: Optional[str] = None, arms: Optional[list[str]] = None,
              seeds: Optional[list[int]] = None, formats: Optional[list[str]] = None, base_model: bool | None = None,
              ignore_gate: bool = False, replace_stale: bool = False,
              log: Callable[[str], None] = tqdm.write) -> int:
    """The pilot's gate stages and the gate first (unless ``ignore_gate``), then every other planned stage not yet
    committed (:func:`study_plans`).

    ``only="pilot"``: the pilot alone. Returns 0 when done, :data:`GATE_FAILED` when the gate stopped the study.
    """
    warn_if_git_ignored(spec, log)
    driver = Driver(spec, replace_stale, log)
    pilot, plans = study_plans(spec, only, arms, seeds, formats, base_model, ignore_gate)
    total = (len(driver.gate_pending(pilot, plans)) if pilot is not None else 0) + sum(
        len(driver.pending(p)) for p in plans)
    with tqdm(total=total, desc=f"study {spec.name}", unit="stage", dynamic_ncols=True) as bar:
        driver.bar = bar
        if spec.train_gate.at is not None and not ignore_gate and only != "pilot":
            decision = driver.train_gate()
            log(f"[study] {decision.message}")
            if not decision.passed:
                return GATE_FAILED
        if pilot is not None:  # its other stages in their place: its training's stops only when it is selected
            driver.run_plan(pilot, stages=gate_stages(spec), part_way=any(p.key == pilot.key for p in plans))
            decision = driver.gate()
            log(f"[study] {decision.message}")
            if not decision.passed and not ignore_gate:
                return GATE_FAILED
        for plan in plans:
            driver.run_plan(plan)
    return 0
