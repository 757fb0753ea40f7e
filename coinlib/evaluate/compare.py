"""Paired comparison of two evaluated models (COIN against CIT) with bootstrap intervals.

Both models answer the same instances under the same instructions, so their difference is measured per instance
and resampled jointly: each bootstrap replicate draws every task's instances with replacement (the same draw for
both models, for every group and instruction) and recomputes, per group,

- ``acc``: accuracy averaged over instructions, instances and tasks (the tables' "Average" accuracy);
- ``std``: the std over instructions pooled over tasks (:func:`coinlib.evaluate.metrics.pooled_std`, the tables'
  and Figure 3's "std", the paper's Table 3 "Average").

Rows come per group and for ``"average"`` (every group pooled: mean accuracy and pooled std over groups).
``p_better`` is the share of replicates in which model ``a`` is more accurate than model ``b``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from coinlib.core.params import ALL_GROUPS
from coinlib.evaluate.metrics import pooled_std

COMPARE_COLUMNS = [
    "group", "model_a", "model_b", "acc_a", "acc_b", "acc_diff", "acc_diff_low", "acc_diff_high", "p_better",
    "std_a", "std_b", "std_diff", "std_diff_low", "std_diff_high", "n_tasks",
    "n_instances",
]


def _cube(predictions: pd.DataFrame, model: str, groups: list[str]) -> dict[str, np.ndarray]:
    """Per task, the correctness array ``[group, instruction, instance]`` of ``model`` (instances sorted by id)."""
    cubes = {}
    for task, frame in predictions[predictions["model"] == model].groupby("task", sort=True):
        table = frame.pivot_table(index=["group", "instruction_id"], columns="instance_id", values="correct",
                                  aggfunc="first")
        missing = [g for g in groups if g not in table.index.get_level_values("group")]
        if missing or table.isna().any().any():
            raise ValueError(f"model {model!r}, task {task!r}: groups {missing or groups} are not answered for every "
                             "instance under every instruction; evaluate both models on the same settings.")
        per_group = [table.loc[g].sort_index(axis=1).to_numpy(dtype=float) for g in groups]
        if len({a.shape for a in per_group}) != 1:
            raise ValueError(f"model {model!r}, task {task!r}: groups have different numbers of instructions "
                             f"{[a.shape[0] for a in per_group]}; compare groups of equal size.")
        cubes[task] = np.stack(per_group)
    return cubes


def _stats(cube: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group accuracy and std over instructions, from ``[group, instruction, ..., instance]``."""
    per_instruction = cube.mean(-1)
    return per_instruction.mean(1), per_instruction.std(1)


def paired_bootstrap(predictions: pd.DataFrame, model_a: str, model_b: str, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> pd.DataFrame:
    """``model_a`` minus ``model_b`` per group and for all groups, with percentile intervals (see module doc)."""
    for model in (model_a, model_b):
        if not (predictions["model"] == model).any():
            raise ValueError(f"model {model!r} is not in the predictions (models: "
                             f"{sorted(predictions['model'].unique())}); evaluate it first.")
    groups = list(dict.fromkeys(predictions.loc[predictions["model"] == model_a, "group"]))
    cubes = {m: _cube(predictions, m, groups) for m in (model_a, model_b)}
    tasks = sorted(cubes[model_a])
    if sorted(cubes[model_b]) != tasks or any(cubes[model_a][t].shape != cubes[model_b][t].shape for t in tasks):
        raise ValueError(f"{model_a!r} and {model_b!r} were not evaluated on the same tasks, instructions and "
                         "instances; evaluate both in one run (evaluate.adapters) so they share the sample.")
    rng = np.random.default_rng(seed)
    point = {m: [_stats(cubes[m][t]) for t in tasks] for m in cubes}
    boot = {m: [] for m in cubes}
    for t in tasks:
        n = cubes[model_a][t].shape[-1]
        idx = rng.integers(0, n, size=(n_boot, n))
        for m in cubes:
            boot[m].append(_stats(cubes[m][t][:, :, idx]))  # cube [group, instruction, boot, instance]

    def over_tasks(per_task: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        accs, stds = (np.stack([s[k] for s in per_task]) for k in (0, 1))  # [task, group, ...]
        acc, std = accs.mean(0), pooled_std(accs, stds, axis=0)
        return (np.concatenate([acc, acc.mean(0, keepdims=True)]),
                np.concatenate([std, np.reshape(pooled_std(acc, std, axis=0), (1, *std.shape[1:]))]))

    (acc_a, std_a), (acc_b, std_b) = over_tasks(point[model_a]), over_tasks(point[model_b])
    (bacc_a, bstd_a), (bacc_b, bstd_b) = over_tasks(boot[model_a]), over_tasks(boot[model_b])
    tail = (1 - level) / 2 * 100
    acc_lo, acc_hi = np.percentile(bacc_a - bacc_b, [tail, 100 - tail], axis=-1)
    std_lo, std_hi = np.percentile(bstd_a - bstd_b, [tail, 100 - tail], axis=-1)
    n_instances = sum(cubes[model_a][t].shape[-1] for t in tasks)
    return pd.DataFrame({
        "group": groups + [ALL_GROUPS], "model_a": model_a, "model_b": model_b, "acc_a": acc_a, "acc_b": acc_b,
        "acc_diff": acc_a - acc_b, "acc_diff_low": acc_lo, "acc_diff_high": acc_hi,
        "p_better": ((bacc_a - bacc_b) > 0).mean(-1), "std_a": std_a, "std_b": std_b,
        "std_diff": std_a - std_b, "std_diff_low": std_lo, "std_diff_high": std_hi,
        "n_tasks": len(tasks), "n_instances": n_instances,
    })[COMPARE_COLUMNS]
