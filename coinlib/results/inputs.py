"""Locate the inputs of the analyses (evaluation summaries, trained adapters) and say what to run when one is missing.

The analyses read the evaluation summary of the current run (``runs/<run.name>/eval/summary.csv``, models labelled
by run name, see the evaluation contract) and the adapters ``runs/<run>/adapter`` of the runs named in the
``analysis`` section. Anything absent raises :class:`MissingInput`, whose message names the notebook and
parameters to run first; in a notebook it is shown as that one message, without a stack trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import pandas as pd
import yaml

from coinlib.core.paths import REPO_ROOT

if TYPE_CHECKING:
    from coinlib.core.params import Params

SUMMARY_COLUMNS = ("model", "task", "group", "mean_acc", "std_acc")
ROLES = ("cit", "coin")


class MissingInput(RuntimeError):
    """An input of an analysis does not exist yet; the message says which notebook and parameters produce it."""

    def _render_traceback_(self) -> list[str]:  # IPython shows this instead of a traceback
        return [f"{type(self).__name__}: {self}"]


def runs_root(P: "Params") -> Path:
    """Folder holding every run (``run.output_root``)."""
    return P.run_dir.parent


def summary_path(P: "Params", run: str | None = None) -> Path:
    """Evaluation summary of run ``run`` (default: the current run)."""
    return runs_root(P) / (run or P.run.name) / "eval" / "summary.csv"


def load_predictions(P: "Params", models: Iterable[str]) -> pd.DataFrame:
    """The current run's predictions table (``eval/predictions.parquet``), checked to hold every model in ``models``."""
    path = summary_path(P).with_name("predictions.parquet")
    if not path.is_file():
        raise MissingInput(f"no predictions for run {P.run.name!r} (expected {_short(path)}). Run "
                           "notebooks/03_evaluate.ipynb first with this parameter file.")
    predictions = pd.read_parquet(path)
    evaluated = set(predictions["model"])
    absent = [m for m in dict.fromkeys(models) if m not in evaluated]
    if absent:
        raise MissingInput(f"{_short(path)} has no predictions of {absent}. Run notebooks/03_evaluate.ipynb with "
                           f"evaluate.adapters including {absent} (run.name {P.run.name!r}).")
    return predictions


def adapter_path(P: "Params", run: str) -> Path:
    """Adapter folder written by training run ``run``."""
    return runs_root(P) / run / "adapter"


def load_summary(path: Path, run: str) -> pd.DataFrame:
    """Read an evaluation summary, checking the columns the analyses need."""
    if not path.is_file():
        raise MissingInput(
            f"no evaluation summary for run {run!r} (expected {_short(path)}). Run notebooks/03_evaluate.ipynb first "
            f"with the parameter file whose run.name is {run!r}."
        )
    summary = pd.read_csv(path)
    missing = [c for c in SUMMARY_COLUMNS if c not in summary.columns]
    if missing:
        raise MissingInput(
            f"{_short(path)} lacks the columns {missing}; it was written by an older evaluation. "
            "Rerun notebooks/03_evaluate.ipynb to regenerate it."
        )
    return summary


def require_adapter(P: "Params", run: str, what: str) -> Path:
    """The adapter folder of run ``run`` (or ``run`` itself when it is an adapter folder, as ``evaluate.adapters``
    allows); :class:`MissingInput` naming the training to run when it is absent."""
    path = adapter_path(P, run)
    folder = Path(run).expanduser()
    if not (path / "adapter_config.json").is_file() and (folder / "adapter_config.json").is_file():
        return folder.resolve()
    if not (path / "adapter_config.json").is_file():
        raise MissingInput(
            f"no adapter for {what} (expected {_short(path)}). Train it first: run notebooks/02_train.ipynb with a "
            f"parameter file whose run.name is {run!r}."
        )
    return path


def role_runs(P: "Params") -> dict[str, str]:
    """``{"cit": run, "coin": run}`` from ``analysis.cit_run`` / ``analysis.coin_run``."""
    runs = {role: getattr(P.analysis, f"{role}_run") for role in ROLES}
    unset = [f"analysis.{role}_run" for role, run in runs.items() if not run]
    if unset:
        raise MissingInput(
            f"{' and '.join(unset)} not set: name the training runs of the CIT baseline (train.contrastive false) "
            "and of COIN in the parameter file's analysis section."
        )
    return runs



def role_adapters(P: "Params", roles: dict[str, str] | None = None) -> dict[str, tuple[str, Path | None]]:
    """``role -> (run, adapter folder)`` of ``roles`` (``role -> run``; default :func:`role_runs`; adapter None for a
    run named ``base``: the base model; a run may also be an adapter folder),
    for :func:`coinlib.evaluate.represent.extract`; :class:`MissingInput` before any model is loaded when an adapter
    is absent."""
    return {role: (run, None if run == "base" else require_adapter(P, run, f"the {role} model (run {run!r})"))
            for role, run in (roles or role_runs(P)).items()}

def lambda_runs(P: "Params") -> dict[float, str]:
    """``analysis.lambda_runs`` as ``{lambda: run}`` sorted by lambda; checks each run's recorded lambda if known."""
    if not P.analysis.lambda_runs:
        raise MissingInput(
            "analysis.lambda_runs is empty: map each lambda of the sweep to its training run, e.g. "
            "{'1': 'lambda1', '1000': 'coin'}, after training each with notebooks/02_train.ipynb."
        )
    out: dict[float, str] = {}
    for key, run in P.analysis.lambda_runs.items():
        try:
            lam = float(key)
        except ValueError:
            raise ValueError(f"analysis.lambda_runs: key {key!r} is not a number; use e.g. '1000' or '1e8'.") from None
        recorded = _recorded_lambda(P, run)
        if recorded is not None and recorded != lam:
            raise ValueError(
                f"analysis.lambda_runs maps lambda {key} to run {run!r}, but {_short(runs_root(P) / run / 'params.yaml')} "
                f"records train.lambda {recorded:g}. Fix the mapping or retrain the run."
            )
        out[lam] = run
    return dict(sorted(out.items()))


def _recorded_lambda(P: "Params", run: str) -> float | None:
    path = runs_root(P) / run / "params.yaml"
    if not path.is_file():
        return None
    train = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("train", {})
    value = train.get("lambda", train.get("lambda_"))
    return None if value is None else float(value)


def summaries_for_runs(P: "Params", runs: dict[str, str], what: str) -> pd.DataFrame:
    """Summary rows of each evaluated run, with a column ``key`` holding the dict key (role or lambda).

    Rows come from the current run's summary when it evaluated the run (``evaluate.adapters``), else from the run's
    own ``runs/<run>/eval/summary.csv``. A run found in neither raises :class:`MissingInput` saying what to run.
    """
    main_path = summary_path(P)
    main = load_summary(main_path, P.run.name) if main_path.is_file() else None
    parts = []
    for key, run in runs.items():
        rows = main[main["model"] == run] if main is not None else None
        own = summary_path(P, run)
        if (rows is None or rows.empty) and own.is_file():
            table = load_summary(own, run)
            rows = table[table["model"] == run]
        if rows is None or rows.empty:
            raise MissingInput(_not_evaluated(P, run, f"{what} {key:g}" if isinstance(key, float) else f"{what} {key}"))
        parts.append(rows.assign(key=key))
    return pd.concat(parts, ignore_index=True)


def _not_evaluated(P: "Params", run: str, what: str) -> str:
    if not (adapter_path(P, run) / "adapter_config.json").is_file():
        return (
            f"run {run!r} ({what}) has neither an adapter nor an evaluation. Train it with notebooks/02_train.ipynb "
            f"(run.name {run!r}), then evaluate it with notebooks/03_evaluate.ipynb (evaluate.adapters including {run!r})."
        )
    looked = " or ".join(dict.fromkeys(_short(summary_path(P, r)) for r in (P.run.name, run)))
    return (
        f"run {run!r} ({what}) was not evaluated: no model labelled {run!r} in {looked}. Run "
        f"notebooks/03_evaluate.ipynb with evaluate.adapters including {run!r} (under run.name {P.run.name!r} or {run!r})."
    )


def _short(path: Path) -> str:
    """A path relative to the repository when inside it (messages stay readable and machine-independent)."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
