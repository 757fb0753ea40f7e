"""The paper's own numbers, stored once with their table numbers, to show beside ours.

``paper_tables.csv`` transcribes Tables 1, 3 and 4 of the COIN paper (Alpaca-7B) as printed, in percent:

    table   1 (task categories), 3 (GLUE x perturbation), 4 (lambda sweep)
    model   base (Alpaca baseline), cit (continual instruction tuning), coin
    lambda  COIN's lambda (1000 in Tables 1 and 3), empty for base and cit
    group   clean, deepwordbug, textfooler, checklist, semantic; "all" in Table 1
    task    GLUE task (coinlib.core.tasks.GLUE_TASKS names) or "average" (the tables' Average column);
            in Table 1 a task category (sentiment, grammar, paraphrase, nli)
    acc_pct, std_pct   mean accuracy and std over the six instructions (percent)

:func:`paper_tables` returns them as fractions in the evaluation summary's column names (``mean_acc``,
``std_acc``), so paper rows and ours go through the same code.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

TABLES_CSV = Path(__file__).with_name("paper_tables.csv")
#: Model and scale of the paper's experiments, used to label its numbers.
PAPER_MODEL = "Alpaca-7B"
#: Lambdas of the paper's sweep (Table 4).
PAPER_LAMBDAS = (1.0, 10.0, 100.0, 1000.0, 10000.0, 1e8)


def paper_tables(table: int | None = None) -> pd.DataFrame:
    """The paper's numbers (one table or all), accuracies as fractions in ``mean_acc`` / ``std_acc``."""
    raw = pd.read_csv(TABLES_CSV, dtype={"model": str, "group": str, "task": str})
    if table is not None:
        if table not in set(raw["table"]):
            raise ValueError(f"no paper table {table}; stored: {sorted(set(raw['table']))}")
        raw = raw[raw["table"] == table]
    out = raw.assign(mean_acc=raw["acc_pct"] / 100.0, std_acc=raw["std_pct"] / 100.0)
    return out.drop(columns=["acc_pct", "std_pct"]).reset_index(drop=True)
