"""Synthetic rank-scored predictions with the evaluation's columns (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd


def synthetic_predictions(skill: float, noise: float, seed: int, n: int = 40, model: str = "m",
                          task: str = "sst2", groups: tuple[str, ...] = ("clean", "checklist")) -> pd.DataFrame:
    """``groups`` x two instructions x ``n`` instances: margin = ``skill`` toward the gold label plus an instance
    effect shared by every instruction, plus instruction-specific noise of SD ``noise``."""
    rng = np.random.default_rng(seed)
    gold = np.arange(n) % 2
    shared = rng.normal(size=n)
    rows = []
    for group in groups:
        for i in range(2):
            margin = skill * (2 * gold - 1) + shared + noise * rng.normal(size=n)
            for j in range(n):
                pred = "pos" if margin[j] > 0 else "neg"
                label = "pos" if gold[j] else "neg"
                rows.append(dict(model=model, task=task, group=group, instruction_id=i, instance_id=str(j),
                                 gold=label, prediction=pred, correct=pred == label,
                                 label_scores=json.dumps({"neg": 0.0, "pos": float(margin[j])}),
                                 label_tokens=json.dumps({"neg": 1, "pos": 1})))
    return pd.DataFrame(rows)
