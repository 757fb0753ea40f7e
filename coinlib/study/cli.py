"""A multi-seed study: arms x seeds trained and evaluated in several input formats, resumable across sessions.

    python -m coinlib.study params/studies/sentiment.yaml --only pilot   # the go/no-go pilot first
    python -m coinlib.study params/studies/sentiment.yaml               # everything (skips what is done)
    python -m coinlib.study params/studies/sentiment.yaml --arms coin --seeds 1 --formats train  # one run
    python -m coinlib.study params/studies/sentiment.yaml --plan        # what is done, what is left
    python -m coinlib.study params/studies/sentiment.yaml --report      # tables and figure only
    python -m coinlib.study params/studies/sentiment.yaml --print-params coin-s1:train
    python -m coinlib.study params/studies/sentiment.yaml --set evaluate.n_per_task=50 --plan  # every arm

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
``gate.format`` stays below ``gate.threshold``, the driver says so and stops (``--ignore-gate`` overrides). Only its
training and that evaluation run first: its other stages run in its place among the selected runs, so with
``--arms``/``--seeds`` that leave it out they do not run at all (``--plan`` shows it as ``<run> (gate)``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Iterable, Optional

from coinlib.core.params import add_set_argument
from coinlib.study.driver import Driver, run_study, study_plans
from coinlib.study.report import write_report
from coinlib.study.spec import BASE_KEY, FORMATS, StudyError, expand, load_spec
from coinlib.study.store import _params_yaml, _rel, runs_dir, stage_times, training_progress, warn_if_git_ignored


def _size(P) -> int:
    e = P.evaluate
    return e.n_per_task * len(e.tasks) * len(e.groups)


def stage_estimate(typical: dict[str, float], plan, stage: str,
                   progress: Optional[dict[str, tuple[int, float]]] = None) -> float:
    """Seconds a stage should take: the median of its kind when committed before; for a part-way or variant
    evaluation, its format's main evaluation scaled by instances x tasks x groups (0 when nothing is known).
    A training with committed progress (``progress``, :func:`training_progress`) counts only its steps left, at
    the median time per step of the committed trainings or, when none is committed, of its own progress; one not
    started while none is committed goes at the median pace of the others' progress."""
    steps = plan.train.train.max_steps if stage == "train" else 0  # the base model has no training
    if progress and steps > 0:
        done, spent = progress.get(plan.key, (0, 0.0))
        if "train" in typical:
            pace = typical["train"] / steps
        else:
            pace = spent / done if done else statistics.median(s / d for d, s in progress.values())
        return pace * max(steps - done, 0)
    if stage in typical:
        return typical[stage]
    if stage in plan.checkpoint_stages():
        Pe = plan.checkpoints[plan.checkpoint_stages()[stage]]
    elif stage.startswith("eval-"):
        Pe = plan.evals.get(stage.removeprefix("eval-"))
    else:
        return 0.0
    main = plan.evals.get(Pe.evaluate.input_format) if Pe is not None else None
    base = typical.get(f"eval-{Pe.evaluate.input_format}") if Pe is not None else None
    return base * _size(Pe) / _size(main) if base and main is not None else 0.0


def _estimate_note(needs: list[float]) -> str:
    """`` (about N min, K without an estimate)`` for a run's stage estimates (0: unknown); empty when none."""
    parts = ([f"about {sum(needs) / 60:.0f} min"] if sum(needs) else []) + (
        [f"{needs.count(0.0)} without an estimate"] if needs.count(0.0) else [])
    return f" ({', '.join(parts)})" if parts else ""


def main(argv: Iterable[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coinlib.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec", help="study spec (YAML)")
    ap.add_argument("--only", choices=["pilot"], help="only the pilot run and the go/no-go gate")
    ap.add_argument("--arms", nargs="+", help="subset of the arms")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the spec's)")
    ap.add_argument("--formats", nargs="+", choices=FORMATS, help="subset of the input formats")
    ap.add_argument("--no-base", action="store_true", help="skip the base-model evaluation")
    ap.add_argument("--no-variants", action="store_true", help="skip the evaluation variants (eval_variants)")
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
        if args.no_variants:  # this time only: the variants' stages stay to do, nothing else changes
            spec = spec.model_copy(update={"eval_variants": {}})
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
            typical, progress, left = stage_times(spec), training_progress(spec), 0.0
            pilot, plans = study_plans(spec, args.only, arms, args.seeds, args.formats, base, args.ignore_gate)
            gate = driver.gate_pending(pilot, plans) if pilot is not None else []  # what a run does first
            rows = [(f"{pilot.key} (gate)", pilot, gate)] if gate else []
            unknown = 0
            for name, plan, todo in rows + [(p.key, p, driver.pending(p)) for p in plans]:
                needs = [stage_estimate(typical, plan, stage, progress) for stage in todo]
                needs = needs if typical or progress else []  # nothing timed is committed: no estimates at all
                left, unknown = left + sum(needs), unknown + needs.count(0.0)
                print(f"{name:16s} {'done' if not todo else 'to do: ' + ', '.join(todo)}{_estimate_note(needs)}")
            if left:
                print(f"time left: {'at least' if unknown else 'about'} {left / 3600:.1f} h (the median wall time of "
                      "each committed stage kind, on the machines that made them; a long training: its steps left "
                      "at the pace of the committed progress)")
            return 0
        status = 0
        if not args.report:
            status = run_study(spec, args.only, arms, args.seeds, args.formats, base, args.ignore_gate,
                               args.replace_stale)
        if runs_dir(spec).is_dir():
            write_report(spec)
            print(f"[study] report: {_rel(spec.committed_dir / 'study.md')}")
        return status
    except StudyError as exc:
        print(f"[study] error: {exc}", file=sys.stderr)
        return 2

