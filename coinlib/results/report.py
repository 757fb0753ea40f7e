"""The tables of RESULTS.md, computed from a run's evaluation outputs (nothing typed by hand).

    python -m coinlib.results params/cpu-mini.yaml            # prints Markdown; writes figures/<run>/results.md

Sections, each present when its inputs exist:
- groups: accuracy ± std per perturbation group for base, CIT and COIN, ours beside the paper's Table 3 averages
  (the paper's rows restricted to the tasks and groups we evaluated);
- paired: COIN − CIT, CIT − base and COIN − base with paired-bootstrap 95% intervals (:mod:`coinlib.evaluate.compare`);
- tasks: clean accuracy per task, ours beside the paper's;
- answers: share of outputs that start with no label word (generate mode), per model and task;
- lambda: the lambda sweep beside the paper's Table 4 (when ``analysis.lambda_runs`` were evaluated).
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Iterable

import pandas as pd

from coinlib.core.fileio import atomic_write_text
from coinlib.core.groups import EVAL_GROUPS
from coinlib.core.paper_numbers import PAPER_MODEL
from coinlib.core.params import load_params_or_exit
from coinlib.evaluate.compare import paired_bootstrap
from coinlib.evaluate.metrics import BASE_LABEL
from coinlib.results import tables
from coinlib.results.inputs import (
    MissingInput,
    load_predictions,
    load_summary,
    role_runs,
    summary_path,
)

if TYPE_CHECKING:
    from coinlib.core.params import Params

ROLE_ORDER = ("base", "cit", "coin")
PAIRS = (("coin", "cit"), ("cit", "base"), ("coin", "base"))


def role_models(P: "Params", present: Iterable[str]) -> dict[str, str]:
    """``{role: model label}`` for base, CIT and COIN, keeping those among the ``present`` model labels."""
    present = set(present)
    roles = {"base": BASE_LABEL, **role_runs(P)}
    return {role: model for role, model in roles.items() if model in present}


def _by_role(summary: pd.DataFrame, roles: dict[str, str]) -> pd.DataFrame:
    return pd.concat([summary[summary["model"] == m].assign(role=r) for r, m in roles.items()], ignore_index=True)


def group_table(summary: pd.DataFrame, roles: dict[str, str], our_model: str) -> pd.DataFrame:
    """Per group and on average: "acc ± std" (in %) of each role, the paper's (Table 3) then ours."""
    ours = _by_role(summary, roles)
    paper = tables.matched_to(tables.paper_glue(3), ours)
    paper = paper[paper["model"].isin(roles)].assign(role=paper["model"])
    columns = {}
    for source, model, rows in (("paper", PAPER_MODEL, paper), ("ours", our_model, ours)):
        per_group = tables.average_over_tasks(rows, by=["role", "group"])
        both = pd.concat([per_group, tables.average_over_groups(per_group, by=["role"])], ignore_index=True)
        for role in (r for r in ROLE_ORDER if r in set(both["role"])):
            sub = both[both["role"] == role].set_index("group")
            columns[f"{source} {model}: {tables.ROLE_LABELS[role]}"] = [
                tables.pct(sub.loc[g, "mean_acc"], sub.loc[g, "std_acc"]) if g in sub.index else "–"
                for g in _groups(ours)]
    return pd.DataFrame({"group": _groups(ours), **columns})


def _groups(ours: pd.DataFrame) -> list[str]:
    """Evaluated groups in the paper's order (others after), then the average over groups."""
    order = {g: i for i, g in enumerate(EVAL_GROUPS)}
    return [*sorted(dict.fromkeys(ours["group"]), key=lambda g: order.get(g, len(order))), tables.ALL_GROUPS]


def paired_table(predictions: pd.DataFrame, roles: dict[str, str], n_boot: int = 2000,
                 seed: int = 0) -> pd.DataFrame:
    """Paired differences between roles (COIN − CIT first), long format (see :func:`coinlib.evaluate.compare.paired_bootstrap`)."""
    parts = [paired_bootstrap(predictions, roles[a], roles[b], n_boot=n_boot, seed=seed).assign(comparison=f"{a} - {b}")
             for a, b in PAIRS if a in roles and b in roles and roles[a] != roles[b]]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def paired_markdown_table(paired: pd.DataFrame) -> pd.DataFrame:
    """Display layout of :func:`paired_table`: differences in points with their intervals."""
    def cell(row, col):
        return f"{100 * row[col]:+.1f} [{100 * row[col + '_low']:+.1f}, {100 * row[col + '_high']:+.1f}]"

    return pd.DataFrame({
        "comparison": [c.replace("coin", "COIN").replace("cit", "CIT") for c in paired["comparison"]],
        "group": paired["group"],
        "Δ accuracy [95% CI]": [cell(r, "acc_diff") for _, r in paired.iterrows()],
        "P(better)": [f"{p:.2f}" for p in paired["p_better"]],
        "Δ std over instructions [95% CI]": [cell(r, "std_diff") for _, r in paired.iterrows()],
    })


def task_table(summary: pd.DataFrame, roles: dict[str, str], group: str = "clean") -> pd.DataFrame:
    """Accuracy ± std (in %) per task under the ``group`` instructions: the paper's (Table 3) and ours, per role."""
    ours = _by_role(summary[summary["group"] == group], roles)
    paper = tables.paper_glue(3)
    paper = paper[(paper["group"] == group) & paper["model"].isin(roles)]
    tasks = list(dict.fromkeys(ours["task"]))
    columns = {}
    for source, rows, key in (("paper", paper, "model"), ("ours", ours, "role")):
        for role in ROLE_ORDER:
            sub = rows[rows[key] == role].set_index("task")
            if not sub.empty:
                columns[f"{source}: {tables.ROLE_LABELS[role]}"] = [
                    tables.pct(sub.loc[t, "mean_acc"], sub.loc[t, "std_acc"]) if t in sub.index else "–" for t in tasks]
    return pd.DataFrame({"task": tasks, **columns})


def answer_table(predictions: pd.DataFrame) -> pd.DataFrame:
    """Per model and task: accuracy and the share of outputs starting with no label word (unparseable, in %)."""
    by = predictions.assign(unparseable=predictions["prediction"] == "").groupby(["model", "task"], sort=False)
    out = by.agg(accuracy=("correct", "mean"), unparseable=("unparseable", "mean"), n=("correct", "size"))
    return (100 * out[["accuracy", "unparseable"]]).round(1).join(out["n"]).reset_index()


def build(P: "Params", n_boot: int = 2000) -> dict[str, pd.DataFrame]:
    """Every section whose inputs exist for run ``P`` (see the module doc)."""
    summary = load_summary(summary_path(P), P.run.name)
    roles = role_models(P, summary["model"])
    predictions = load_predictions(P, roles.values())
    sections = {
        "groups": group_table(summary, roles, P.model.name),
        "paired": paired_markdown_table(paired_table(predictions, roles, n_boot, P.run.seed)),
        "tasks": task_table(summary, roles),
        "answers": answer_table(predictions),
    }
    try:
        comparison = tables.lambda_comparison(tables.ours_by_lambda(P), P.model.name)
        sections["lambda"] = tables.lambda_table(comparison)
    except MissingInput:
        pass
    return sections


def to_markdown(sections: dict[str, pd.DataFrame]) -> str:
    return "\n".join(f"### {name}\n\n{tables.to_markdown(table)}" for name, table in sections.items())


def main(argv: Iterable[str] | None = None) -> int:

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params_file")
    ap.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the paired intervals")
    args = ap.parse_args(list(argv) if argv is not None else None)
    P = load_params_or_exit(args.params_file)
    try:
        text = to_markdown(build(P, args.n_boot))
    except MissingInput as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    P.figures_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(P.figures_dir / "results.md", text)
    print(text)
    return 0
