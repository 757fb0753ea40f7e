"""The evaluation sample: which rows of each GLUE evaluation split are evaluated, shared by data and evaluation.

Evaluation draws the same rows for every prompt, group and model: the first ``n`` positions of a fixed
permutation of the split's rows (seed :data:`EVAL_SAMPLE_SEED`). Samples are nested: the sample of ``n``
rows is contained in the sample of any ``m >= n`` rows. Training pools that can only come from an
evaluated split (QNLI, MNLI, QQP in the offline mirror) exclude the sample of ``P.data.eval_holdout`` rows,
so any evaluation with ``n_per_task <= eval_holdout`` is disjoint from training.
"""

from __future__ import annotations

import os

import numpy as np

#: Seed of the evaluation sample; the same for every run, so every model sees the same instances.
EVAL_SAMPLE_SEED = 0

#: GLUE evaluation task -> (dataset key in ``coinlib.core.sources.DATASETS``, config, split).
EVAL_SPLITS: dict[str, tuple[str, str, str]] = {
    "cola": ("glue", "cola", "validation"),
    "mnli": ("glue", "mnli", "validation_matched"),
    "mnli_matched": ("glue", "mnli_matched", "validation"),
    "mnli_mismatched": ("glue", "mnli_mismatched", "validation"),
    "mrpc": ("glue", "mrpc", "validation"),
    "qnli": ("glue", "qnli", "validation"),
    "qqp": ("glue", "qqp", "validation"),
    "rte": ("glue", "rte", "validation"),
    "sst2": ("glue", "sst2", "validation"),
    "wnli": ("glue", "wnli", "validation"),
}


def sample_indices(n_rows: int, n: int, seed: int = EVAL_SAMPLE_SEED) -> list[int]:
    """Sorted row positions of a deterministic sample of ``n`` of ``n_rows`` rows (all rows when ``n >= n_rows``).

    The sample is the first ``n`` entries of ``numpy.random.default_rng(seed).permutation(n_rows)``, so
    smaller samples are subsets of larger ones for the same seed and ``n_rows``.
    """
    if n_rows < 0 or n < 0:
        raise ValueError(f"sample_indices: n_rows and n must be >= 0, got n_rows={n_rows}, n={n}")
    if n >= n_rows:
        return list(range(n_rows))
    perm = np.random.default_rng(seed).permutation(n_rows)
    return sorted(int(i) for i in perm[:n])


def eval_split(task: str) -> tuple[str, str, str]:
    """``(dataset, config, split)`` evaluated for a GLUE task; a clear error for other names."""
    if task not in EVAL_SPLITS:
        raise KeyError(f"no evaluation split for task {task!r}; known: {', '.join(EVAL_SPLITS)}")
    return EVAL_SPLITS[task]


def eval_sample_ids(task: str, n: int, seed: int = EVAL_SAMPLE_SEED, mirror: str | os.PathLike | None = "auto",
                    n_rows: int | None = None) -> list[int]:
    """Row positions of ``task``'s evaluation split that an evaluation of ``n`` instances uses.

    ``n_rows`` skips loading the split when its length is known.
    """
    if n_rows is None:
        from coinlib.core.sources import load_split

        dataset, config, split = eval_split(task)
        n_rows = len(load_split(dataset, config, split, mirror))
    else:
        eval_split(task)
    return sample_indices(n_rows, n, seed)
