"""FLAN 2021 (v1) templates: rendering, the answer-options block, usable templates, and the 25 task adapters.

Templates and option texts are loaded at run time through :mod:`coinlib.core.sources` (the mirror's
``flan/templates_v1.json``, else FLAN's pinned ``templates.py`` and ``tasks.py``, parsed with ``ast``, never
imported). Rendering follows FLAN's ``format_from_feature_dictionary``: every ``{\\w*}`` in a template is
replaced literally by the field of that name (not ``str.format``: no brace escaping), in one pass. The
options block is FLAN's ``format_options``: ``"OPTIONS:\\n- " + "\\n- ".join(options)``.

A task adapter (our code) maps a row of the task's Hugging Face Hub dataset to FLAN's template fields and
answer, following the field mappings FLAN applies to the TFDS features (``tasks.py`` ``_process_<task>``).
"""

from __future__ import annotations

import ast
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from coinlib.core.sources import (
    JSON_ARTIFACTS,
    GitHubFile,
    fetch_text,
    load_json_artifact,
)

log = logging.getLogger(__name__)

PLACEHOLDER = re.compile(r"{\w*}")
OPTIONS_FIELD = "options_"
ANSWER_FIELD = "answer"
#: FLAN's ``tasks.py`` at the commit of the pinned ``templates.py``: the online source of option texts.
FLAN_TASKS_ORIGIN = GitHubFile(
    "google-research/FLAN", JSON_ARTIFACTS["flan_templates"].origin.commit, "flan/tasks.py")


class FlanError(ValueError):
    """Bad template data or task configuration; the message names the problem and the fix."""


class MissingPlaceholderError(FlanError):
    """A template names a field the row does not provide."""


# ------------------------------------------------------------------------------------------ rendering
def placeholders(text: str) -> list[str]:
    """Field names referenced by ``{name}`` in ``text``, in order of appearance."""
    return [m[1:-1] for m in PLACEHOLDER.findall(text)]


def render(text: str, fields: Mapping[str, str], where: str = "template") -> str:
    """Substitute every ``{name}`` of ``text`` with ``fields[name]`` literally, as FLAN does.

    Raises :class:`MissingPlaceholderError` naming the placeholder, ``where`` and the available fields.
    """
    def sub(match: re.Match) -> str:
        name = match.group()[1:-1]
        try:
            return fields[name]
        except KeyError:
            raise MissingPlaceholderError(
                f"{where}: placeholder {{{name}}} has no value; the row provides {sorted(fields)}. "
                "Fix: map that field in the task adapter, or exclude the template."
            ) from None

    return PLACEHOLDER.sub(sub, text)


def format_options(options: list[str]) -> str:
    """FLAN's answer-options block: ``OPTIONS:`` then one ``- option`` line per option."""
    return "OPTIONS:\n- " + "\n- ".join(options)


# ------------------------------------------------------------------------------------------ templates
@dataclass(frozen=True)
class Template:
    """One (input, target) pattern of a FLAN template key; ``template_id`` is its index (0-9)."""

    key: str
    template_id: int
    input: str
    target: str

    @property
    def fields(self) -> set[str]:
        return set(placeholders(self.input)) | set(placeholders(self.target))


@dataclass(frozen=True)
class Exclusion:
    """A template not used for a task, with the reason."""

    task: str
    template_id: int
    reason: str


@dataclass
class FlanTemplates:
    """FLAN templates and option texts per template key, with where they came from."""

    patterns: dict[str, list[Template]]
    options: dict[str, Optional[list[str]]]  # None: options are built per example (wsc273) or unknown
    source: str

    def templates(self, key: str) -> list[Template]:
        if key not in self.patterns:
            raise FlanError(f"no FLAN templates under key {key!r} ({self.source}); known: {sorted(self.patterns)}")
        return self.patterns[key]


def templates_from_mirror(doc: Mapping[str, Any]) -> FlanTemplates:
    """Parse the mirror's ``flan/templates_v1.json``."""
    tasks = doc.get("tasks")
    if not isinstance(tasks, dict) or not tasks:
        raise FlanError("FLAN template file has no 'tasks' mapping. Fix: re-create flan/templates_v1.json in the mirror.")
    patterns = {
        key: [Template(key, i, t["input"], t["target"]) for i, t in enumerate(spec["templates"])]
        for key, spec in tasks.items()
    }
    options = {key: spec["options"] if isinstance(spec.get("options"), list) else None for key, spec in tasks.items()}
    return FlanTemplates(patterns, options, str(doc.get("source", "mirror flan/templates_v1.json")))


def templates_from_origin(patterns: Mapping[str, Any], tasks_source: str | None, source: str) -> FlanTemplates:
    """Build from FLAN's ``PATTERNS`` literal and (if given) the source text of FLAN's ``tasks.py``."""
    parsed = {key: [Template(key, i, inp, tgt) for i, (inp, tgt) in enumerate(pats)] for key, pats in patterns.items()}
    opts = options_from_tasks_py(tasks_source) if tasks_source else {}
    return FlanTemplates(parsed, {key: opts.get(key) for key in parsed}, source)


def options_from_tasks_py(source: str) -> dict[str, list[str]]:
    """Option texts per task key from FLAN's ``tasks.py``, read with ``ast`` (never executed).

    A task key's process function is the ``_process_*`` name in its ``TASK_CONFIGS[key]`` preprocessors
    (else ``_process_<key>``); its options are the literal list in ``options = tf.constant([...])``.
    """
    tree = ast.parse(source)
    fn_options: dict[str, list[str]] = {}
    key_fn: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("_process_"):
            for stmt in ast.walk(node):
                lit = _options_literal(stmt)
                if lit is not None:
                    fn_options[node.name] = lit
                    break
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for target in node.targets:
                if (isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name)
                        and target.value.id == "TASK_CONFIGS" and isinstance(target.slice, ast.Constant)):
                    fn = _process_fn_of(node.value)
                    if fn:
                        key_fn[str(target.slice.value)] = fn
    keys = set(key_fn) | {name[len("_process_"):] for name in fn_options}
    out = {key: fn_options.get(key_fn.get(key, f"_process_{key}")) for key in keys}
    return {k: v for k, v in out.items() if v is not None}


def _options_literal(stmt: ast.AST) -> Optional[list[str]]:
    if not (isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "options" for t in stmt.targets)):
        return None
    value = stmt.value
    if isinstance(value, ast.Call) and value.args:
        value = value.args[0]
    try:
        lit = ast.literal_eval(value)
    except ValueError:
        return None
    return [str(x) for x in lit] if isinstance(lit, (list, tuple)) else None


def _process_fn_of(call: ast.Call) -> Optional[str]:
    for kw in call.keywords:
        if kw.arg == "preprocessors" and isinstance(kw.value, ast.List):
            names = [e.id for e in kw.value.elts if isinstance(e, ast.Name) and e.id.startswith("_process_")]
            if names:
                return names[0]
    return None


def load_templates(mirror: str | os.PathLike | None = "auto") -> FlanTemplates:
    """FLAN templates from the mirror, else from FLAN's pinned origin (templates.py, plus tasks.py for options)."""
    doc = load_json_artifact("flan_templates", mirror)
    if "origin" not in doc:
        return templates_from_mirror(doc)
    try:
        tasks_source = fetch_text(FLAN_TASKS_ORIGIN)
    except OSError as exc:
        log.warning("FLAN tasks.py (%s) unavailable (%s): option texts unknown", FLAN_TASKS_ORIGIN.describe(), exc)
        tasks_source = None
    return templates_from_origin(doc["origin"], tasks_source, str(doc.get("source", "FLAN templates.py")))


# ------------------------------------------------------------------------------------------ adapters
@dataclass(frozen=True)
class Example:
    """One source row as FLAN sees it: template fields (with ``answer`` and ``options_``), options, answer."""

    instance_id: str
    fields: dict[str, str]
    options: list[str]
    answer: str


Row = Mapping[str, Any]


@dataclass(frozen=True)
class TaskAdapter:
    """How one FLAN task reads its Hugging Face Hub dataset.

    ``fields`` maps template placeholders to functions of a hub row; ``label`` gives the answer's index in
    the options (``None`` drops the row); ``row_options`` builds per-row options (WSC273). ``splits`` are
    the hub training splits; ``mirror_splits`` the splits read (every one present, concatenated) from a
    local mirror, as ``split`` or ``config/split``.
    """

    name: str
    key: str
    display: str
    category: str
    paper_count: int
    dataset: str
    config: Optional[str]
    splits: tuple[str, ...]
    mirror_splits: tuple[str, ...]
    fields: Mapping[str, Callable[[Row], str]]
    label: Callable[[Row], Optional[int]] = field(default=lambda r: int(r["label"]))
    row_options: Optional[Callable[[Row], list[str]]] = None
    answer_aliases: tuple[str, ...] = ()

    def mirror_files(self) -> list[tuple[Optional[str], str]]:
        """``(config, split)`` of each split read from a mirror."""
        return [tuple(s.split("/", 1)) if "/" in s else (self.config, s) for s in self.mirror_splits]

    @property
    def provides(self) -> set[str]:
        return set(self.fields) | {ANSWER_FIELD, OPTIONS_FIELD, *self.answer_aliases}

    def example(self, row: Row, options: Optional[list[str]], instance_id: str) -> Optional[Example]:
        """The row as template fields; ``None`` when FLAN filters the row out."""
        label = self.label(row)
        if label is None:
            return None
        opts = self.row_options(row) if self.row_options else options
        if not opts:
            raise FlanError(
                f"task {self.name}: no option texts for template key {self.key!r}. Fix: load templates from the "
                "mirror (flan/templates_v1.json) or make FLAN's tasks.py reachable."
            )
        if not 0 <= label < len(opts):
            raise FlanError(f"task {self.name}, {instance_id}: label {label} outside the {len(opts)} options {opts}")
        values = {name: fn(row) for name, fn in self.fields.items()}
        answer = opts[label]
        values[ANSWER_FIELD] = answer
        values.update({alias: answer for alias in self.answer_aliases})
        values[OPTIONS_FIELD] = format_options(opts)
        return Example(instance_id, values, list(opts), answer)


def usable_templates(adapter: TaskAdapter, flan: FlanTemplates) -> tuple[list[Template], list[Exclusion]]:
    """Templates whose target is the answer, whose input uses an input field of the instance, and whose fields the
    adapter provides; the rest with reasons."""
    answers = {f"{{{a}}}" for a in (ANSWER_FIELD, *adapter.answer_aliases)}
    keep: list[Template] = []
    dropped: list[Exclusion] = []
    for t in flan.templates(adapter.key):
        missing = sorted(t.fields - adapter.provides)
        if t.target not in answers:
            dropped.append(Exclusion(adapter.name, t.template_id, f"target {t.target!r} is not the answer"))
        elif missing:
            dropped.append(Exclusion(
                adapter.name, t.template_id,
                f"needs {', '.join('{' + m + '}' for m in missing)}, which {adapter.dataset} rows do not provide"))
        elif not set(placeholders(t.input)) & set(adapter.fields):
            dropped.append(Exclusion(
                adapter.name, t.template_id,
                f"input uses none of the instance's fields ({', '.join('{' + f + '}' for f in adapter.fields)}), so "
                "an original and its hard negative would be the same text with different answers"))
        else:
            keep.append(t)
    return keep, dropped


def _col(name: str) -> Callable[[Row], str]:
    return lambda row: str(row[name])


def _boolq_title(row: Row) -> str:
    title, sep, _ = row["passage"].partition(" -- ")
    return title if sep else ""


def _boolq_text(row: Row) -> str:
    title, sep, text = row["passage"].partition(" -- ")
    return text if sep else title


_CAPS = {"The": "the", "His": "his", "My": "my", "Her": "her", "Their": "their", "An": "an", "A": "a"}
_UNCAPS = {v: k for k, v in _CAPS.items()}


def normalize_cap(option: str, pronoun: str) -> str:
    """WSC273 candidate with its first word's case matched to the pronoun's (TFDS ``normalize_cap``)."""
    words = option.split(" ")
    table = _CAPS if pronoun[:1].islower() else _UNCAPS
    words[0] = table.get(words[0], words[0])
    return " ".join(words)


def _wsc273_options(row: Row) -> list[str]:
    suffix = row["text"][row["pronoun_loc"] + len(row["pronoun"]):].strip()
    return [normalize_cap(o, row["pronoun"]) + " " + suffix for o in row["options"]]


_NLI = "Natural Language Inference"
_SENT = "Sentiment Analysis"
_PARA = "Paraphrase Identification"
_PREMISE_HYP = {"premise": _col("premise"), "hypothesis": _col("hypothesis")}
_S1S2 = {"sentence1": _col("sentence1"), "sentence2": _col("sentence2")}
#: TFDS TREC coarse order (DESC, ENTY, ABBR, HUM, NUM, LOC) index of each hub coarse_label (ABBR, ENTY, DESC, HUM, LOC, NUM).
_TREC_HUB_TO_FLAN = (2, 1, 0, 3, 5, 4)


def _anli(r: int, count: int) -> TaskAdapter:
    return TaskAdapter(f"anli_r{r}", "anli", f"ANLI(R{r})", _NLI, count, "anli", None, (f"train_r{r}",), (f"train_r{r}",),
                       {"context": _col("premise"), "hypothesis": _col("hypothesis")})


def _mnli(which: str, count: int) -> TaskAdapter:
    # Online: MNLI train. Offline only the evaluated dev sample exists (the holdout is excluded by coinlib.data.pairs).
    return TaskAdapter(f"mnli_{which}", "mnli", f"MNLI-{which.capitalize()}", _NLI, count, "glue", "mnli",
                       ("train",), ("train", f"mnli_{which}/validation"), _PREMISE_HYP)


# Table 2 of the paper: display name, category and the number of entries sampled per dataset.
ADAPTERS: dict[str, TaskAdapter] = {a.name: a for a in [
    _anli(1, 2664), _anli(2, 2670), _anli(3, 2658),
    TaskAdapter("cb", "cb", "CB", _NLI, 232, "super_glue", "cb", ("train",), ("train",), _PREMISE_HYP),
    _mnli("matched", 2678), _mnli("mismatched", 2678),
    TaskAdapter("qnli", "qnli", "QNLI", _NLI, 2682, "glue", "qnli", ("train",), ("train", "validation"),
                {"question": _col("question"), "sentence": _col("sentence")}),
    TaskAdapter("rte", "rte", "RTE", _NLI, 2328, "super_glue", "rte", ("train",), ("train",), _PREMISE_HYP),
    TaskAdapter("snli", "snli", "SNLI", _NLI, 2682, "snli", "plain_text", ("train",), ("train", "test"), _PREMISE_HYP,
                label=lambda r: int(r["label"]) if r["label"] in (0, 1, 2) else None),
    TaskAdapter("wnli", "wnli", "WNLI", _NLI, 920, "glue", "wnli", ("train",), ("train",), _S1S2),
    TaskAdapter("imdb_reviews", "imdb_reviews", "IMDB", _SENT, 354, "imdb", "plain_text", ("train",), ("train", "test"),
                {"text": lambda r: r["text"].replace("<br />", "\n")}),
    TaskAdapter("sentiment140", "sentiment140", "Sent140", _SENT, 2684, "sentiment140", "sentiment140", ("train",),
                ("train", "test"), {"text": _col("text")}, label=lambda r: 1 if r["sentiment"] in (3, 4) else 0),
    TaskAdapter("sst2", "sst2", "SST2", _SENT, 2682, "glue", "sst2", ("train",), ("train",), {"sentence": _col("sentence")}),
    TaskAdapter("yelp_polarity_reviews", "yelp_polarity_reviews", "Yelp", _SENT, 834, "yelp_polarity", "plain_text",
                ("train",), ("train", "test"),
                {"text": lambda r: re.sub(r"\\n", " ", re.sub(r'\\""', '"', r["text"]))}),
    TaskAdapter("glue_mrpc", "glue_mrpc", "MRPC", _PARA, 2684, "glue", "mrpc", ("train",), ("train",), _S1S2),
    TaskAdapter("glue_qqp", "glue_qqp", "QQP", _PARA, 2684, "glue", "qqp", ("train",), ("train", "validation"),
                {q: (lambda r, q=q: r[q].replace('""', "'")) for q in ("question1", "question2")}),
    TaskAdapter("paws_wiki", "paws_wiki", "PAWS Wiki", _PARA, 2684, "paws", "labeled_final", ("train",), ("train",), _S1S2),
    TaskAdapter("stsb", "stsb", "STS-B", _PARA, 2682, "glue", "stsb", ("train",), ("train",), _S1S2,
                label=lambda r: int("%.0f" % r["label"]), answer_aliases=("answer_str",)),
    TaskAdapter("bool_q", "bool_q", "BoolQ", "Reading Comprehension", 1044, "super_glue", "boolq", ("train",),
                ("train", "validation"),
                {"title": _boolq_title, "text": _boolq_text, "question": _col("question")}),
    TaskAdapter("multirc", "multirc", "MultiRC", "Reading Comprehension", 30, "super_glue", "multirc", ("train",),
                ("train", "validation"),
                {"paragraph": _col("paragraph"), "question": _col("question"), "response": _col("answer")}),
    TaskAdapter("wsc273", "wsc273", "WSC273", "Coreference Resolution", 720, "winograd_wsc", "wsc273", ("test",),
                ("test",), {"context": lambda r: r["text"][: r["pronoun_loc"]].strip()}, row_options=_wsc273_options),
    TaskAdapter("ag_news_subset", "ag_news_subset", "AG News", "Summarization", 2678, "ag_news", None, ("train",),
                ("train", "test"), {"text": _col("text")}),
    TaskAdapter("trec", "trec", "TREC", "Miscellaneous", 2682, "trec", None, ("train",), ("train",),
                {"text": _col("text")}, label=lambda r: _TREC_HUB_TO_FLAN[int(r["coarse_label"])]),
    TaskAdapter("cola", "cola", "CoLA", "Miscellaneous", 2684, "glue", "cola", ("train",), ("train",),
                {"sentence": _col("sentence")}),
    TaskAdapter("wic", "wic", "WIC", "Miscellaneous", 2684, "super_glue", "wic", ("train",), ("train", "validation"),
                {"sentence1": _col("sentence1"), "sentence2": _col("sentence2"), "word": _col("word")}),
]}
#: FLAN task names this project can build training data for (not the evaluation registry, coinlib.core.tasks.TASKS).
FLAN_TASKS: list[str] = list(ADAPTERS)


def render_example(template: Template, example: Example, task: str = "") -> tuple[str, str]:
    """``(prompt, target)`` of ``example`` rendered with ``template``."""
    where = f"task {task or template.key} template {template.template_id}"
    return render(template.input, example.fields, where), render(template.target, example.fields, where)


@dataclass
class TaskPool:
    """A task's usable instances and templates, and where they came from."""

    adapter: TaskAdapter
    examples: list[Example]
    templates: list[Template]
    excluded: list[Exclusion]
    source: str
    held_out: int = 0
    dropped: int = 0

    @property
    def name(self) -> str:
        return self.adapter.name
