"""The docs stay true to the tree: the module map lists every module under coinlib/ and nothing else; the README's
links to docs/ pages resolve; the README keeps the two commands .ci/run and the Makefile provide."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_ROW = re.compile(r"^\| `(coinlib/[^`]+\.py)` \| (.+) \|$", re.M)


def module_map(text: str) -> dict[str, str]:
    return dict(MODULE_ROW.findall(text))


def map_problems(listed: dict[str, str], modules: set[str]) -> list[str]:
    return ([f"no entry for {m}" for m in sorted(modules - set(listed))]
            + [f"entry for a module that does not exist: {m}" for m in sorted(set(listed) - modules)]
            + [f"empty purpose: {m}" for m, purpose in sorted(listed.items()) if not purpose.strip()])


def test_module_map_lists_every_module_and_only_those():
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "coinlib").rglob("*.py")}
    assert map_problems(module_map((ROOT / "docs" / "stages.md").read_text(encoding="utf-8")), modules) == []


def test_module_map_check_finds_missing_and_stale_entries():
    text = "| `coinlib/a.py` | does a |\n| `coinlib/gone.py` | did something |\n"
    assert map_problems(module_map(text), {"coinlib/a.py", "coinlib/new.py"}) == [
        "no entry for coinlib/new.py", "entry for a module that does not exist: coinlib/gone.py"]


def test_readme_links_resolve():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if not link.startswith(("http://", "https://"))]
    assert local and [link for link in local if not (ROOT / link).exists()] == []
    for page in (ROOT / "docs").glob("*.md"):  # every page is reachable from the front page
        assert f"docs/{page.name}" in readme, page.name


def test_readme_gives_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make smoke" in readme and "make test" in readme
    assert (ROOT / ".ci" / "run").read_text(encoding="utf-8").rstrip().splitlines()[-1] == "make test"
