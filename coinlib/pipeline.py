"""Run the numbered notebooks headless with papermill on one parameter file.

    python -m coinlib.pipeline params/smoke.yaml            # all six notebooks
    python -m coinlib.pipeline params/cit.yaml --only 01 02   # a subset

The file is validated before any notebook starts. Executed notebooks are written to
``<run dir>/notebooks/``; figures go under ``figures/<run name>/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from coinlib.core.params import ParamsError, load_params
from coinlib.core.sources import REPO_ROOT

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
KERNEL_NAME = "coin"


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally those whose names start with one of ``only``."""
    found = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if not only or any(nb.name.startswith(o) for o in only)]


def run(params_file: str | Path, only: list[str] | None = None, kernel_name: str | None = KERNEL_NAME) -> dict[str, float]:
    """Validate ``params_file`` then execute the notebooks; returns seconds per notebook."""
    import papermill as pm

    params = load_params(params_file)  # raises ParamsError naming file and key
    out_dir = params.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Notebooks get the fully merged values, so they see exactly what was validated here.
    values = {"base": None, **params.model_dump(by_alias=True, exclude={"base"})}
    timings: dict[str, float] = {}
    for nb in notebooks(only):
        start = time.perf_counter()
        print(f"[coin] {nb.name} ...", flush=True)
        pm.execute_notebook(
            str(nb), str(out_dir / nb.name), parameters=values, cwd=str(NOTEBOOKS_DIR),
            kernel_name=kernel_name, progress_bar=False, log_output=False,
        )
        timings[nb.name] = time.perf_counter() - start
        print(f"[coin] {nb.name} done in {timings[nb.name]:.0f} s -> {out_dir / nb.name}", flush=True)
    total = sum(timings.values())
    print(f"[coin] {len(timings)} notebooks in {total:.0f} s; figures in {params.figures_dir}", flush=True)
    return timings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params_file", help="parameter file, e.g. params/smoke.yaml")
    ap.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 01 02")
    ap.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel name (default: %(default)s)")
    args = ap.parse_args(argv)
    try:
        run(args.params_file, args.only, args.kernel)
    except ParamsError as exc:
        print(f"[coin] invalid parameters:\n{exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
