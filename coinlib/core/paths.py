"""Where things live in the checkout: the one declaration of the project's folders.

``params/`` holds the parameter files; ``runs/`` (ignored by git) what runs write: built data, adapters,
checkpoints, evaluation caches and tables; ``figures/`` (committed) the figures with the CSV behind each, and the
small outputs of study runs committed so a fresh clone can resume and report (``figures/<study>/runs/``).
"""

from __future__ import annotations

from pathlib import Path

#: The checkout (the folder holding ``coinlib/``).
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Parameter files; a file's ``base`` is resolved relative to it.
PARAMS_DIR = REPO_ROOT / "params"
#: The notebooks the pipeline runs.
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
#: Default ``run.output_root`` (relative to the checkout): run outputs, never committed.
RUNS_DIR = "runs"
#: Default ``run.figures_root`` and a study's ``committed_root`` (relative to the checkout): committed outputs.
FIGURES_DIR = "figures"
