"""Run the numbered notebooks headless with papermill on one parameter file.

    python -m coinlib.pipeline params/smoke.yaml              # all six notebooks
    python -m coinlib.pipeline params/cit.yaml --only 01 02   # a subset
    python -m coinlib.pipeline params/smoke.yaml --set train.lambda=10 --set run.name=smoke-l10  # overrides
    python -m coinlib.pipeline --commit-outputs               # re-execute the committed notebooks in place

The file is validated before any notebook starts. Executed notebooks are written to
``<run dir>/notebooks/``; figures go under ``figures/<run name>/``. One line per notebook is printed
(name, seconds, executed notebook); a failing cell is printed with its source and traceback. Kernels import this
checkout's coinlib, also from a virtualenv shared with (and installed editable from) another checkout.

``--commit-outputs`` executes each notebook with its default parameters (those of params/smoke.yaml) and
replaces it only if it ran through and its outputs are clean (``output_problems``): no absolute path, no
library warning, no widget output.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from coinlib.core.fileio import atomic_write_text
from coinlib.core.params import ParamsError, add_set_argument, load_params
from coinlib.core.paths import NOTEBOOKS_DIR, REPO_ROOT, RUNS_DIR

KERNEL_NAME = "coin"
COMMIT_RUNS = REPO_ROOT / RUNS_DIR / "commit-outputs"


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks in order, optionally those whose names start with one of ``only``."""
    found = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [nb for nb in found if not only or any(nb.name.startswith(o) for o in only)]


def shown(path: str | Path) -> str:
    """``path`` as printed: relative to the working directory when below it, so messages name no machine."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------------------------
# Headless kernels


def load_ipython_extension(ipython: Any) -> None:
    """Set up a headless kernel (``execute`` loads this module as an IPython extension at kernel start).

    Progress bars: papermill has no widget frontend, so tqdm's widget bar would be stored as a stale "0%"
    line plus widget state; tqdm.auto's console class (the one it picks outside Jupyter) writes text to
    stderr instead. In JupyterLab this extension is not loaded and bars are widgets (ipywidgets).
    Warnings: third-party FutureWarnings are deprecation notices between libraries (peft calling a
    transformers property renamed for v6), not something a notebook reader can act on; those raised by
    coinlib or by notebook code still show.
    """
    import warnings

    import tqdm.asyncio
    import tqdm.auto
    import tqdm.autonotebook
    import tqdm.std

    tqdm.autonotebook.tqdm, tqdm.autonotebook.trange = tqdm.std.tqdm, tqdm.std.trange
    tqdm.auto.tqdm = tqdm.asyncio.tqdm  # tqdm.auto.trange looks this name up at call time
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(?!coinlib|__main__)")


def kernel_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with this checkout first on ``PYTHONPATH``: a kernel starts in notebooks/,
    where ``import coinlib`` would otherwise find the checkout the shared virtualenv was installed (editable) from, and
    write runs and figures into that one."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _headless_kernel_manager(process_log: Path) -> type:
    """jupyter_client's AsyncKernelManager that keeps the kernel process quiet.

    The kernel process's own stdout and stderr go to ``process_log``, not to this terminal: cell output
    travels over the kernel's sockets, so what lands there is process-level chatter, such as a libzmq
    assertion from a socket closed during shutdown (seen once in CI, after the notebook had finished).
    ``execute`` shows the log when the kernel dies.

    Normal shutdown is a plain shutdown request. The stock shutdown sends SIGINT first (to stop running
    code); a notebook that ran through is idle, and an interrupt that lands while the kernel still finishes
    its last message is logged as "[IPKernelApp] ERROR | KeyboardInterrupt caught in kernel" though nothing
    failed. A kernel that does not exit in time still gets SIGTERM, then SIGKILL (``finish_shutdown``).

    The kernel imports this checkout's coinlib (``kernel_env``), whichever checkout the virtualenv was installed from.
    """
    from jupyter_client.manager import AsyncKernelManager

    class HeadlessKernelManager(AsyncKernelManager):
        async def _async_launch_kernel(self, kernel_cmd: list[str], **kw: Any) -> None:
            env = kernel_env(kw.get("env"))
            with open(process_log, "ab") as log:  # the child keeps its own copy of the descriptor
                return await super()._async_launch_kernel(kernel_cmd, **{**kw, "stdout": log, "stderr": log,
                                                                         "env": env})

        async def shutdown_kernel(self, now: bool = False, restart: bool = False) -> None:
            if now or restart or not self.owns_kernel or not await self.is_alive():
                return await super().shutdown_kernel(now=now, restart=restart)
            self.shutting_down = True
            self.stop_restarter()
            await self.request_shutdown()
            await self.finish_shutdown()
            await self.cleanup_resources()

    return HeadlessKernelManager


def execute(nb: str | Path, out: str | Path, parameters: dict | None = None,
            kernel_name: str | None = KERNEL_NAME) -> None:
    """Execute notebook ``nb`` into ``out`` (working directory notebooks/) in a headless kernel.

    The kernel talks over IPC sockets in a private temporary folder (no TCP port, so ipykernel has no
    unencrypted-TCP warning to give), loads this module as an extension (text progress bars) and is shut
    down without an interrupt (``_headless_kernel_manager``). Raises papermill's ``PapermillExecutionError``
    for a failing cell, nbclient's ``DeadKernelError`` (with what the kernel process wrote) for a dead kernel.
    """
    import papermill as pm
    from nbclient.exceptions import DeadKernelError
    from traitlets.config import Config

    with tempfile.TemporaryDirectory(prefix="coin-kernel-") as ipc_dir:
        config = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(ipc_dir, "kernel")}})
        process_log = Path(ipc_dir) / "kernel-process.log"
        try:
            pm.execute_notebook(
                str(nb), str(out), parameters=parameters, cwd=str(NOTEBOOKS_DIR), kernel_name=kernel_name,
                progress_bar=False, log_output=False, config=config,
                kernel_manager_class=_headless_kernel_manager(process_log),
                extra_arguments=["--IPKernelApp.extensions=coinlib.pipeline"],  # not __name__: "__main__" under -m
            )
        except DeadKernelError as err:
            tail = process_log.read_text(errors="replace")[-4000:].strip() if process_log.exists() else ""
            raise DeadKernelError(f"{err}; the kernel process wrote:\n{tail or '(nothing)'}\nOut of memory is "
                                  "the usual cause: lower the batch size or free the memory another job holds.") from err


class NotebookFailed(RuntimeError):
    """A notebook cell raised; the message names the notebook and shows the cell and its traceback."""


def _execute_or_explain(nb: Path, out: Path, parameters: dict | None, kernel_name: str | None) -> None:
    """``execute``, turning papermill's cell error into ``NotebookFailed`` with a readable message."""
    from nbclient.exceptions import DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    try:
        execute(nb, out, parameters, kernel_name)
    except DeadKernelError as err:
        raise NotebookFailed(f"[coin] {nb.name} stopped: {err} (executed notebook: {shown(out)})") from err
    except PapermillExecutionError as err:
        trace = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(err.traceback or [f"{err.ename}: {err.evalue}"]))
        rule = "-" * 75
        raise NotebookFailed(f"[coin] {nb.name} failed in cell [{err.exec_count}] (executed notebook: "
                             f"{shown(out)}):\n{rule}\n{err.source}\n{rule}\n{trace}") from err


def run(params_file: str | Path, only: list[str] | None = None, kernel_name: str | None = KERNEL_NAME,
        sets: Sequence[str] = ()) -> dict[str, float]:
    """Validate ``params_file`` (with ``--set`` overrides) then execute the notebooks; returns seconds per notebook."""
    params = load_params(params_file, sets)  # raises ParamsError naming file and key
    out_dir = params.run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    # Notebooks get the fully merged values, so they see exactly what was validated here.
    values = {"base": None, **params.model_dump(by_alias=True, exclude={"base"})}
    timings: dict[str, float] = {}
    for nb in notebooks(only):
        start = time.perf_counter()
        _execute_or_explain(nb, out_dir / nb.name, values, kernel_name)
        timings[nb.name] = time.perf_counter() - start
        print(f"{nb.name:<26} {timings[nb.name]:5.0f} s  {shown(out_dir / nb.name)}", flush=True)
    return timings


# ---------------------------------------------------------------------------------------------------------
# Committed outputs

# An absolute POSIX path under a usual top-level folder, not part of a URL or of a relative path.
_ABS_PATH = re.compile(r"(?<![\w.~:/-])/(?:home|root|tmp|usr|opt|var|work|mnt|srv|etc|private|Users|Volumes|"
                       r"scratch|data|lib|lib64|nix|proc)/[^\s'\"<>()\[\]]*")
# A Python warning as printed by the warnings module ("file:line: FutureWarning: ..."), or a logging
# warning/error of another library (coinlib's own log messages are part of the notebook's story).
_WARNING = re.compile(r"\b[A-Z]\w*Warning: |^(?:WARNING|ERROR|CRITICAL):(?!coinlib\b)", re.M)
_WIDGET = "application/vnd.jupyter.widget-view+json"


def _output_texts(output: dict) -> list[str]:
    """The text of one output (streams, errors and text-like data; never images)."""
    texts = []
    if "text" in output:
        texts.append("".join(output["text"]) if isinstance(output["text"], list) else output["text"])
    if output.get("output_type") == "error":
        texts += [output.get("evalue", ""), *output.get("traceback", [])]
    for mime, value in output.get("data", {}).items():
        if mime.startswith("text/") or mime.endswith("json"):
            texts.append("".join(value) if isinstance(value, list) else str(value))
    return texts


def output_problems(nb: Any, name: str = "notebook") -> list[str]:
    """What makes ``nb``'s outputs unfit to commit: absolute paths, stderr warnings, widget outputs."""
    problems = []
    home = str(Path.home())
    for i, cell in enumerate(nb.get("cells", [])):
        for output in cell.get("outputs", []):
            where = f"{name} cell {i}"
            for text in _output_texts(output):
                for path in sorted(set(_ABS_PATH.findall(text))):
                    problems.append(f"{where}: absolute path {path!r}")
                if home not in ("/", "") and home + "/" in text:
                    problems.append(f"{where}: home folder {home!r}")
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
                for line in text.splitlines():
                    if _WARNING.search(line):
                        problems.append(f"{where}: stderr warning {line.strip()!r}")
            if _WIDGET in output.get("data", {}):
                problems.append(f"{where}: widget output (headless runs write progress bars as text)")
    pm_meta = nb.get("metadata", {}).get("papermill", {})
    for key in ("input_path", "output_path"):
        if os.path.isabs(str(pm_meta.get(key) or "")):
            problems.append(f"{name} metadata papermill.{key}: absolute path {pm_meta[key]!r}")
    return problems


def _normalise(nb: Any, name: str) -> None:
    """Make paths into the checkout relative and the home folder ``~``, in outputs and papermill metadata."""
    root, home = str(REPO_ROOT), str(Path.home())

    def fix(text: str) -> str:
        text = text.replace(root + "/", "").replace(root, ".")
        return text.replace(home + "/", "~/") if home not in ("/", "") else text

    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = fix(output["text"])
            for mime, value in output.get("data", {}).items():
                if mime.startswith("text/") and isinstance(value, str):
                    output["data"][mime] = fix(value)
    pm_meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if key in pm_meta:
            pm_meta[key] = name


def commit_outputs(only: list[str] | None = None, kernel_name: str | None = KERNEL_NAME) -> list[str]:
    """Re-execute the committed notebooks with their defaults; replace each one whose outputs are clean.

    Returns the problems found (empty when every notebook was replaced). A failing cell raises
    ``NotebookFailed`` and leaves that notebook as it was.
    """
    import nbformat

    problems: list[str] = []
    for nb_path in notebooks(only):
        start = time.perf_counter()
        out = COMMIT_RUNS / nb_path.name  # kept for a look when the notebook fails or is not clean
        out.parent.mkdir(parents=True, exist_ok=True)
        _execute_or_explain(nb_path, out, None, kernel_name)
        nb = nbformat.read(out, as_version=4)
        _normalise(nb, nb_path.name)
        found = output_problems(nb, nb_path.name)
        if found:
            problems += found
            print(f"{nb_path.name:<26} {time.perf_counter() - start:5.0f} s  NOT replaced: "
                  f"{len(found)} problem(s)", flush=True)
            continue
        atomic_write_text(nb_path, nbformat.writes(nb))
        print(f"{nb_path.name:<26} {time.perf_counter() - start:5.0f} s  {shown(nb_path)}", flush=True)
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m coinlib.pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("params_file", nargs="?", help="parameter file, e.g. params/smoke.yaml")
    ap.add_argument("--only", nargs="*", help="notebook number prefixes to run, e.g. 01 02")
    ap.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel name (default: %(default)s)")
    ap.add_argument("--commit-outputs", action="store_true",
                    help="re-execute notebooks/*.ipynb in place with their default parameters (no params file)")
    add_set_argument(ap)
    args = ap.parse_args(argv)
    if args.commit_outputs == bool(args.params_file):
        ap.error("give a parameter file, or --commit-outputs without one")
    if args.commit_outputs and args.sets:
        ap.error("--commit-outputs runs the notebooks' defaults; --set needs a parameter file")
    try:
        if args.commit_outputs:
            problems = commit_outputs(args.only, args.kernel)
            for p in problems:
                print(f"[coin] {p}", file=sys.stderr)
            return 1 if problems else 0
        run(args.params_file, args.only, args.kernel, args.sets)
    except ParamsError as exc:
        print(f"[coin] invalid parameters:\n{exc}", file=sys.stderr)
        return 2
    except NotebookFailed as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
