"""Part-way stops of a training run: adapter snapshots evaluated at fractions of training (a metric-vs-step curve,
and what an unfinished long run already says) and the training gate (the generation loss must be falling in every
arm before the rest of training is spent)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from coinlib.core.params import Params
from coinlib.study.spec import snapshot_name
from coinlib.study.store import commit_stage

#: The generation loss column of the Trainer's log history (``coinlib.train.trainer``).
GEN_LOSS = "loss_ent"
#: Files of a Trainer checkpoint that make a loadable LoRA adapter.
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


class TrainingPaused(Exception):
    """Training stopped on purpose after saving the checkpoint of step ``step`` (resumable from it)."""

    def __init__(self, step: int):
        super().__init__(f"training paused after step {step}")
        self.step = step


def snapshot_dir(P: Params, step: int) -> Path:
    return P.run_dir.parent / snapshot_name(P, step) / "adapter"


def take_snapshot(P: Params, checkpoint: Path) -> Path:
    """Copy the adapter of a Trainer ``checkpoint`` (``checkpoint-N``) to :func:`snapshot_dir` atomically."""
    step = int(checkpoint.name.removeprefix("checkpoint-"))
    files: dict[str, Path | str] = {name: checkpoint / name for name in ADAPTER_FILES}
    files["coin_params.yaml"] = P.to_yaml()
    folder = snapshot_dir(P, step)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return commit_stage(folder, files, {"run": P.run.name, "step": step, "checkpoint": checkpoint.name})


class PauseAt(TrainerCallback):
    """At each step of ``steps``: save a checkpoint, copy its adapter to :func:`snapshot_dir`, and (``pause``) raise
    :class:`TrainingPaused` once everything is on disk, so the caller can evaluate or gate before resuming.

    Registered after callbacks that act on saves (e.g. committing progress), so they see the checkpoint first."""

    def __init__(self, P: Params, steps: list[int], pause: bool = True):
        self.P, self.steps, self.pause = P, set(steps), pause

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps:
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        step = state.global_step
        if step not in self.steps:
            return control
        take_snapshot(self.P, Path(args.output_dir) / f"checkpoint-{step}")
        if self.pause:
            raise TrainingPaused(step)
        return control


def newest_step(P: Params) -> int:
    """The global step of the newest checkpoint in ``runs/<run>/checkpoints`` (0 when none)."""
    steps = [int(p.name.removeprefix("checkpoint-")) for p in (P.run_dir / "checkpoints").glob("checkpoint-*")
             if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").is_file()]
    return max(steps, default=0)


def log_history(P: Params, step: int) -> list[dict[str, Any]]:
    """The Trainer's log history saved with the checkpoint of ``step``."""
    state = P.run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json"
    return json.loads(state.read_text(encoding="utf-8")).get("log_history", [])


@dataclass(frozen=True)
class LossTrend:
    """The generation loss over the logged steps up to a stop: the means of the first and last quarter."""

    run: str
    step: int
    first: float
    last: float
    n_logged: int

    @property
    def drop(self) -> float:
        """Relative fall from the first quarter's mean to the last quarter's (negative: rising)."""
        return 1.0 - self.last / self.first if self.first > 0 else math.nan


def loss_trend(run: str, step: int, history: list[dict[str, Any]]) -> LossTrend:
    """:class:`LossTrend` of the rows of ``history`` that log the generation loss (:data:`GEN_LOSS`)."""
    values = [float(h[GEN_LOSS]) for h in history if GEN_LOSS in h and h.get("step", 0) <= step]
    if len(values) < 2:
        raise ValueError(f"{run}: {len(values)} logged generation losses up to step {step}; the training gate needs "
                         "at least 2. Fix: a smaller train.logging_steps, or a later train_gate.at.")
    k = max(1, len(values) // 4)
    return LossTrend(run, step, sum(values[:k]) / k, sum(values[-k:]) / k, len(values))


def gate_verdict(trends: list[LossTrend], min_drop: float) -> tuple[bool, str]:
    """Whether every run's generation loss fell by at least ``min_drop`` (relative), and a message with the evidence."""
    lines = [f"{t.run} at step {t.step}: generation loss {t.first:.3f} (first quarter of {t.n_logged} logged steps) "
             f"-> {t.last:.3f} (last quarter), {100 * t.drop:+.1f}% fall" for t in trends]
    passed = all(t.drop > min_drop for t in trends)
    head = ("TRAINING GATE PASSED" if passed else
            f"TRAINING GATE STOPPED THE STUDY (the generation loss must fall by more than {100 * min_drop:.1f}% in "
            "every arm). Fix: check the recipe (learning rate, lambda, data), or pass --ignore-gate to spend the rest "
            "anyway")
    return passed, head + ":\n  " + "\n  ".join(lines)


def snapshot_ready(P: Params, step: int) -> bool:
    return all((snapshot_dir(P, step) / name).is_file() for name in ADAPTER_FILES)

