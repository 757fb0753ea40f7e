"""The contrastive training set: originals, positives (same instance, another template) and hard negatives.

Paper sections 3.2 and 4.1: tasks are visited round-robin; each visit takes the task's next instance x
(output y), the next instance x' with another output y' != y, and a template t, and emits two consecutive
entries that are each other's hard negatives (the order the reference code trains in, 2 entries per
micro-batch): (t, x) and (t, x'). Each entry's positive renders its instance with another template of the
same task (a paraphrased instruction, same output); its hard negative is the other entry's original (same
template, other instance and output). Every row records task, template ids and instance ids, so each pair
can be traced to its source rows. All choices come from per-task generators seeded by ``(seed, task index)``.

:func:`load_or_build` is the entry point: it builds ``P.data_dir`` (dataset, JSONL, Table-2-style counts,
build report) once, atomically, and loads it afterwards while the build report's source, digest of the files
read (:func:`data_key`) and :data:`DATA_FORMAT_VERSION` still match; otherwise it builds again.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

import numpy as np

from coinlib.core.fileio import atomic_folder, update_digest
from coinlib.core.promptsets import load_prompt_set
from coinlib.core.sources import (
    DATASETS,
    JSON_ARTIFACTS,
    SourceUnavailable,
    load_split,
    read_jsonl,
    resolve_mirror,
    source_key,
)
from coinlib.core.tasks import EVAL_SAMPLE_SEED, held_out_rows
from coinlib.data.augment import add_perturbed_positives
from coinlib.data.flan import (
    ADAPTERS,
    FLAN_TASKS,
    Example,
    FlanTemplates,
    TaskAdapter,
    TaskPool,
    load_templates,
    render,
    render_example,
    usable_templates,
)

if TYPE_CHECKING:
    import datasets
    import pandas as pd

    from coinlib.core.params import Params

log = logging.getLogger(__name__)

#: Short names accepted in ``data.tasks`` besides FLAN's task names.
ALIASES: dict[str, list[str]] = {
    "anli": ["anli_r1", "anli_r2", "anli_r3"], "mnli": ["mnli_matched", "mnli_mismatched"],
    "mrpc": ["glue_mrpc"], "qqp": ["glue_qqp"], "paws": ["paws_wiki"], "imdb": ["imdb_reviews"],
    "yelp": ["yelp_polarity_reviews"], "boolq": ["bool_q"], "ag_news": ["ag_news_subset"],
}
#: Bumped whenever the data-building code changes what it writes; built data of another version is rebuilt.
DATA_FORMAT_VERSION = 2
COLUMNS = ["entry_id", "task", "category", "template_id", "pos_template_id", "instance_id", "neg_instance_id",
           "prompt", "target", "pos_prompt", "neg_prompt", "neg_target", "options"]


class DataError(ValueError):
    """Data cannot be built as configured; the message names the problem and the fix."""


class LeakageError(DataError):
    """An evaluation instruction occurs in a training entry."""


@dataclass
class Skip:
    """A task left out of the build, with the reason."""

    task: str
    reason: str


@dataclass
class Pools:
    """Everything :func:`load_pools` found: usable pools, skipped tasks, excluded templates."""

    pools: list[TaskPool] = field(default_factory=list)
    skips: list[Skip] = field(default_factory=list)
    templates_source: str = ""


# ------------------------------------------------------------------------------------------ tasks
def resolve_tasks(names: Iterable[str]) -> list[str]:
    """FLAN task names for ``names`` (``all``, FLAN names or :data:`ALIASES`), in Table 2 order, no duplicates."""
    wanted: set[str] = set()
    for name in names:
        key = str(name).strip().lower()
        if key == "all":
            wanted.update(FLAN_TASKS)
        elif key in ADAPTERS:
            wanted.add(key)
        elif key in ALIASES:
            wanted.update(ALIASES[key])
        else:
            close = difflib.get_close_matches(key, [*FLAN_TASKS, *ALIASES], n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise DataError(f"unknown task {name!r} in data.tasks.{hint} Known tasks: all, {', '.join(FLAN_TASKS)}; "
                            f"aliases: {', '.join(ALIASES)}.")
    if not wanted:
        raise DataError("data.tasks is empty. Fix: list FLAN task names, or use [all].")
    return [t for t in FLAN_TASKS if t in wanted]


# ------------------------------------------------------------------------------------------ pools
def _read_rows(adapter: TaskAdapter, mirror: str | os.PathLike | None) -> list[tuple[tuple[Optional[str], str], list[dict]]]:
    """Rows per ``(config, split)``: every mirror file the adapter names, or the hub's training splits."""
    root = resolve_mirror(mirror)
    source = DATASETS[adapter.dataset]
    if root is None:
        return [((adapter.config, s), load_split(adapter.dataset, adapter.config, s, None).to_list())
                for s in adapter.splits]
    files = [(c, s) for c, s in adapter.mirror_files() if source.mirror_path(root, c, s).is_file()]
    if not files:
        wanted = ", ".join(f"{c or 'default'}/{s}" for c, s in adapter.mirror_files())
        raise SourceUnavailable(f"no mirror file for {source.hub_id} ({wanted}) in the mirror's hf/ folder")
    # Same rows as load_split gives for a mirror file, without the round trip through Arrow.
    return [((c, s), read_jsonl(source.mirror_path(root, c, s))) for c, s in files]


def load_pool(adapter: TaskAdapter, flan: FlanTemplates, mirror: str | os.PathLike | None = "auto",
              holdout: int = 300, sample: str = "shared") -> TaskPool:
    """The task's instances (evaluation holdout and FLAN-filtered rows removed, inputs de-duplicated).

    Rows of an evaluation split (the only offline pool of QNLI, MNLI and QQP) exclude every row the evaluation
    ``sample`` (``evaluate.sample``) of ``holdout`` rows of any task uses (:func:`coinlib.core.tasks.held_out_rows`).
    Raises :class:`DataError` for an empty source file, fewer than two usable templates, or fewer than two
    distinct outputs; :class:`~coinlib.core.sources.SourceUnavailable` when the data cannot be found.
    """
    templates, excluded = usable_templates(adapter, flan)
    if len(templates) < 2:
        raise DataError(f"task {adapter.name}: {len(templates)} usable template(s); positives need two. "
                        f"Excluded: {[(e.template_id, e.reason) for e in excluded]}. Fix: drop the task from data.tasks.")
    options = flan.options.get(adapter.key)
    examples: list[Example] = []
    seen: set[tuple] = set()
    held = dropped = 0
    parts = []
    for (config, split), rows in _read_rows(adapter, mirror):
        name = f"{adapter.dataset}/{config or 'default'}/{split}"
        if not rows:
            raise DataError(f"task {adapter.name}: source {name} has no rows. Fix: re-create that mirror file, "
                            "or remove the task from data.tasks.")
        exclude = held_out_rows((adapter.dataset, config, split), holdout, mirror, n_rows=len(rows), sample=sample)
        held += len(exclude)
        parts.append(f"{name} ({len(rows)} rows" + (f", {len(exclude)} evaluation rows held out)" if exclude else ")"))
        for i, row in enumerate(rows):
            if i in exclude:
                continue
            ex = adapter.example(row, options, f"{name}/{i}")
            key = None if ex is None else tuple(sorted(
                (k, v) for k, v in ex.fields.items() if k not in {"answer", *adapter.answer_aliases}))
            if ex is None or key in seen:
                dropped += 1
                continue
            seen.add(key)
            examples.append(ex)
    pool = TaskPool(adapter, examples, templates, excluded, "; ".join(parts), held, dropped)
    if examples and len({e.answer for e in examples}) < 2:
        raise DataError(f"task {adapter.name}: all {len(examples)} instances have the output "
                        f"{examples[0].answer!r}; a hard negative needs another output. Fix: drop the task or add data.")
    return pool


def load_pools(tasks: Iterable[str], mirror: str | os.PathLike | None = "auto", holdout: int = 300,
               flan: FlanTemplates | None = None, sample: str = "shared") -> Pools:
    """Pools of the requested tasks; tasks without data (or with every row held out) become named skips.
    ``holdout`` rows of the evaluation ``sample`` (``shared`` or ``reference``) are held out (:func:`load_pool`)."""
    flan = flan or load_templates(mirror)
    out = Pools(templates_source=flan.source)
    for name in resolve_tasks(tasks):
        try:
            pool = load_pool(ADAPTERS[name], flan, mirror, holdout, sample)
        except SourceUnavailable as exc:
            out.skips.append(Skip(name, f"no data: {exc}"))
            continue
        if not pool.examples:
            out.skips.append(Skip(name, f"no usable rows left in {pool.source}"))
            continue
        out.pools.append(pool)
    if out.skips:
        log.warning("skipped tasks: %s", "; ".join(f"{s.task} ({s.reason})" for s in out.skips))
    return out


# ------------------------------------------------------------------------------------------ entries
class _TaskSampler:
    """Per-task draws: next instance (round-robin cursor over a seeded permutation), templates, negatives."""

    def __init__(self, pool: TaskPool, seed: int, replacement: bool):
        self.pool = pool
        self.rng = np.random.default_rng([seed, FLAN_TASKS.index(pool.name)])
        self.replacement = replacement
        self.order = self.rng.permutation(len(pool.examples))
        self.cursor = 0
        answers = np.array(_answer_codes(pool.examples))
        self.answers = answers
        self.others = {int(a): np.flatnonzero(answers != a) for a in np.unique(answers)}

    def next_index(self) -> Optional[int]:
        if self.cursor == len(self.order):
            if not self.replacement:
                return None
            self.order = self.rng.permutation(len(self.order))
            self.cursor = 0
        self.cursor += 1
        return int(self.order[self.cursor - 1])

    def partner(self, i: int) -> Optional[int]:
        """The next unused instance whose output differs from ``i``'s (moved to the cursor and consumed).

        When every remaining instance shares ``i``'s output: with replacement a random other-output instance
        (reused), without it ``None`` (the task leaves the rotation).
        """
        for pos in range(self.cursor, len(self.order)):
            if self.answers[self.order[pos]] != self.answers[i]:
                self.order[[self.cursor, pos]] = self.order[[pos, self.cursor]]
                self.cursor += 1
                return int(self.order[self.cursor - 1])
        if not self.replacement:
            return None
        others = self.others[int(self.answers[i])]
        return int(others[self.rng.integers(len(others))])

    def next_pair(self) -> Optional[tuple[int, int]]:
        i = self.next_index()
        j = None if i is None else self.partner(i)
        return None if j is None else (i, j)

    def pair_entries(self, i: int, j: int) -> list[dict[str, Any]]:
        """Two entries sharing template t: (t, x_i) and (t, x_j), each the other's hard negative."""
        pool, rng = self.pool, self.rng
        n_t = len(pool.templates)
        a = int(rng.integers(n_t))
        pos_templates = [(a + 1 + int(rng.integers(n_t - 1))) % n_t for _ in range(2)]
        t = pool.templates[a]
        rendered = [render_example(t, pool.examples[k], pool.name) for k in (i, j)]
        out = []
        for me, other, b in ((0, 1, pos_templates[0]), (1, 0, pos_templates[1])):
            x, x_neg, t_pos = pool.examples[(i, j)[me]], pool.examples[(i, j)[other]], pool.templates[b]
            out.append({
                "task": pool.name, "category": pool.adapter.category,
                "template_id": t.template_id, "pos_template_id": t_pos.template_id,
                "instance_id": x.instance_id, "neg_instance_id": x_neg.instance_id,
                "prompt": rendered[me][0], "target": rendered[me][1],
                "pos_prompt": render(t_pos.input, x.fields, f"task {pool.name} template {t_pos.template_id}"),
                "neg_prompt": rendered[other][0], "neg_target": rendered[other][1], "options": list(x.options),
            })
        return out


def _answer_codes(examples: list[Example]) -> list[int]:
    codes: dict[str, int] = {}
    return [codes.setdefault(e.answer, len(codes)) for e in examples]


def build_entries(pools: list[TaskPool], size: int, seed: int, replacement: bool = False,
                  caps: Optional[dict[str, int]] = None, progress: bool = False) -> list[dict[str, Any]]:
    """``size`` entries, one pair of mutual hard negatives per task visit, round-robin, until every task is done.

    Entries ``2k`` and ``2k+1`` share task and template and are each other's hard negatives (the order
    ``train.batching: reference`` trains in; nothing is shuffled later). ``size`` must be even. Without
    ``replacement`` a task leaves the rotation once its instances are used (or only instances of one output
    are left); with it, its pool is reshuffled and reused. ``caps`` limits entries per task (e.g. the paper's
    Table 2 counts, all even; an odd cap stops one entry short).
    """
    from tqdm.auto import tqdm

    if not pools:
        raise DataError("no task has data to build from. Fix: check data.tasks and the mirror (run.mirror).")
    if size % 2:
        raise DataError(f"data.size={size} is odd; entries come in pairs of mutual hard negatives. Fix: use an "
                        f"even size such as {size + 1}.")
    samplers = [_TaskSampler(p, seed, replacement) for p in pools]
    counts: Counter[str] = Counter()
    entries: list[dict[str, Any]] = []
    active = list(samplers)
    with tqdm(total=size, desc="entries", disable=not progress, mininterval=1.0) as bar:
        while active and len(entries) < size:
            for s in list(active):
                if len(entries) >= size:
                    break
                capped = caps and counts[s.pool.name] + 2 > caps.get(s.pool.name, size)
                pair = None if capped else s.next_pair()
                if pair is None:
                    active.remove(s)
                    continue
                for e in s.pair_entries(*pair):
                    entries.append({"entry_id": len(entries), **e})
                counts[s.pool.name] += 2
                bar.update(2)
    if len(entries) < size:
        log.warning("built %d of %d entries: every task is exhausted or capped (set data.replacement to reuse "
                    "instances)", len(entries), size)
    return entries


def task_caps(paper_counts: dict[str, int], mode: str, size: int) -> Optional[dict[str, int]]:
    """Per-task entry caps for ``data.task_caps``: None, Table 2's counts, or those scaled to fill ``size``.

    ``table2-scaled`` keeps Table 2's proportions over the tasks given (those with data) and scales them so the
    caps sum to ``size`` exactly: even caps (entries come in pairs), largest remainders rounded up.
    """
    if mode == "none":
        return None
    if mode == "table2":
        return dict(paper_counts)
    if mode != "table2-scaled":
        raise DataError(f"unknown data.task_caps {mode!r}. Fix: use none, table2 or table2-scaled.")
    total = sum(paper_counts.values())
    if total <= 0:
        raise DataError("table2-scaled needs tasks with Table 2 counts. Fix: check data.tasks.")
    pairs = {name: count * (size // 2) / total for name, count in paper_counts.items()}
    caps = {name: int(v) for name, v in pairs.items()}
    for name in sorted(pairs, key=lambda n: (caps[n] - pairs[n], n))[: size // 2 - sum(caps.values())]:
        caps[name] += 1
    return {name: 2 * n for name, n in caps.items()}


# ------------------------------------------------------------------------------------------ leakage
def eval_instructions(prompt_sets: Iterable[str], mirror: str | os.PathLike | None = "auto") -> list[tuple[str, str, str]]:
    """``(set/group, task, instruction)`` for every instruction of the prompt sets (names or JSON/YAML paths).

    Sets are read with :func:`coinlib.core.promptsets.load_prompt_set`, exactly as the evaluation reads them.
    """

    out = []
    for name in prompt_sets:
        for group, tasks in load_prompt_set(name, mirror).items():
            for task, texts in tasks.items():
                out += [(f"{name}/{group}", task, t) for t in texts if isinstance(t, str) and t.strip()]
    if not out:
        raise DataError(f"prompt sets {list(prompt_sets)} hold no instructions; the leakage guard would check nothing.")
    return out


def check_leakage(entries: list[dict[str, Any]], instructions: list[tuple[str, str, str]]) -> None:
    """Raise :class:`LeakageError` if any instruction (whitespace-stripped) occurs in a prompt of an entry."""
    columns = ("prompt", "pos_prompt", "neg_prompt")
    blob = "\x00".join({e[c] for e in entries for c in columns})
    leaks = [(g, task, text.strip()) for g, task, text in instructions if text.strip() in blob]
    if not leaks:
        return
    lines = []
    for g, task, text in leaks[:5]:
        e = next(e for e in entries if any(text in e[c] for c in columns))
        lines.append(f"  {g} [{task}] {text!r} occurs in entry {e['entry_id']} (task {e['task']}, "
                     f"template {e['template_id']}/{e['pos_template_id']})")
    raise LeakageError(f"{len(leaks)} evaluation instruction(s) occur in the training data:\n" + "\n".join(lines)
                       + "\nFix: remove the task or template from data.tasks, or the instruction from the prompt set.")


# ------------------------------------------------------------------------------------------ tables
def task_counts(entries: list[dict[str, Any]], pools: Pools) -> "pd.DataFrame":
    """Table-2-style counts: one row per requested task, the paper's count beside ours."""
    import pandas as pd

    built = Counter(e["task"] for e in entries)
    by_name = {p.name: p for p in pools.pools}
    skips = {s.task: s.reason for s in pools.skips}
    rows = []
    for name in [t for t in FLAN_TASKS if t in by_name or t in skips]:
        a, p = ADAPTERS[name], by_name.get(name)
        rows.append({
            "category": a.category, "task": name, "dataset": a.display, "paper_count": a.paper_count,
            "entries": built.get(name, 0), "pool_size": len(p.examples) if p else 0,
            "held_out": p.held_out if p else 0, "templates_used": len(p.templates) if p else 0,
            "templates": " ".join(str(t.template_id) for t in p.templates) if p else "",
            "status": "ok" if p else f"skipped: {skips[name]}", "source": p.source if p else "",
        })
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ build / load
def _check_holdout(P: "Params") -> None:
    """Refuse a build whose holdout might not cover the rows the evaluation of ``P`` scores."""
    e, held = P.evaluate, P.data.eval_holdout
    if getattr(e, "sample", "shared") == "reference":
        # the holdout is the reference draw of eval_holdout rows; draws of other sizes need not be nested
        # (random.sample switches algorithm with the size), so only the same size holds out the same rows
        if e.n_per_task != held:
            raise DataError(
                f"evaluate.sample is reference with evaluate.n_per_task {e.n_per_task}, but training holds out the "
                f"reference sample of data.eval_holdout {held} rows; random.sample draws of different sizes need "
                "not share rows, so evaluated rows could be trained on. Fix: set data.eval_holdout equal to "
                f"evaluate.n_per_task ({e.n_per_task}), or use evaluate.sample: shared.")
        return
    seed = getattr(P.evaluate, "sample_seed", EVAL_SAMPLE_SEED)
    if seed != EVAL_SAMPLE_SEED or P.evaluate.n_per_task > P.data.eval_holdout:
        raise DataError(
            f"evaluation samples {P.evaluate.n_per_task} rows per task (seed {seed}) but training holds out only the "
            f"{P.data.eval_holdout}-row evaluation sample (seed {EVAL_SAMPLE_SEED}): evaluated rows could be trained on. "
            "Fix: set data.eval_holdout >= evaluate.n_per_task (and use coinlib.core.tasks' seed).")


def build(P: "Params", progress: bool = True) -> "datasets.Dataset":
    """Build the dataset for ``P`` and write it to ``P.data_dir`` atomically (see :func:`load_or_build`)."""
    import datasets

    _check_holdout(P)
    key = data_key(P)  # before reading: a file changed during the build then fails the next check
    mirror = P.run.mirror
    pools = load_pools(P.data.tasks, mirror, P.data.eval_holdout, sample=P.evaluate.sample)
    caps = task_caps({p.name: p.adapter.paper_count for p in pools.pools}, P.data.task_caps, P.data.size)
    seed = P.run.seed + P.data.seed_offset
    entries = build_entries(pools.pools, P.data.size, seed, P.data.replacement, caps, progress)
    if P.data.extra_positive_levels:  # perturbed own template as extra positives (coinlib.data.augment)

        entries = add_perturbed_positives(entries, pools.pools, P.data.extra_positive_levels, seed)
    prompt_sets = list(dict.fromkeys([*P.data.eval_prompt_sets, P.evaluate.prompt_set]))
    check_leakage(entries, eval_instructions(prompt_sets, mirror))
    counts = task_counts(entries, pools)
    ds = datasets.Dataset.from_list(entries)

    def fill(tmp: Path) -> None:
        ds.save_to_disk(str(tmp / "dataset"))
        with open(tmp / "entries.jsonl", "w", encoding="utf-8") as fh:
            for e in entries:
                fh.write(json.dumps(e, ensure_ascii=False) + "\n")
        counts.to_csv(tmp / "task_counts.csv", index=False)
        report = {
            "size_requested": P.data.size, "size_built": len(entries), "seed": seed,
            "templates_source": pools.templates_source,
            "skipped": [vars(s) for s in pools.skips],
            "excluded_templates": [vars(x) for p in pools.pools for x in p.excluded],
            "prompt_sets_checked": prompt_sets,
        }
        report.update(key, files=built_files(tmp))
        (tmp / "build_report.json").write_text(json.dumps(report, indent=1), encoding="utf-8")

    out = P.data_dir
    # Another process may finish the same build in between: from the same inputs its bytes are the same, so its
    # folder will do (one built from another mirror, sharing the folder name, will not).
    atomic_folder(out, fill, accept_existing=lambda folder: (folder / "dataset").is_dir() and _built_from(folder, key))
    return datasets.load_from_disk(str(out / "dataset"))


def format_entry(entry: dict[str, Any]) -> str:
    """One entry as readable text: its ids, then the original, positive and hard negative with their answers."""
    return (f"=== entry {entry['entry_id']} | task {entry['task']} | templates {entry['template_id']} -> "
            f"{entry['pos_template_id']}\n"
            f"--- original  [{entry['instance_id']}]\n{entry['prompt']}\n>>> {entry['target']}\n"
            f"--- positive  [{entry['instance_id']}]\n{entry['pos_prompt']}\n>>> {entry['target']}\n"
            f"--- negative  [{entry['neg_instance_id']}]\n{entry['neg_prompt']}\n>>> {entry['neg_target']}\n")


def load_or_build(P: "Params", progress: bool = True) -> "datasets.Dataset":
    """The built dataset for ``P``: loaded from ``P.data_dir/dataset`` if present, else built there first.

    ``P.data_dir`` then holds ``dataset/`` (``save_to_disk``), ``entries.jsonl``, ``task_counts.csv``
    (Table-2-style) and ``build_report.json`` (skipped tasks, excluded templates, checked prompt sets).
    """
    import datasets

    _check_holdout(P)
    if (P.data_dir / "dataset").is_dir():
        stale = _stale(P)
        if not stale:
            return datasets.load_from_disk(str(P.data_dir / "dataset"))
        log.warning("rebuilding %s: %s", P.data_dir, stale)
    return build(P, progress)


def source_files(P: "Params") -> list[Path]:
    """The local files a build of ``P`` reads (mirror data of every requested task, templates, prompt sets)."""
    root = resolve_mirror(P.run.mirror)
    files: list[Path] = []
    if root is not None:
        for name in resolve_tasks(P.data.tasks):
            a = ADAPTERS[name]
            files += [DATASETS[a.dataset].mirror_path(root, c, sp) for c, sp in a.mirror_files()]
        files.append(root / JSON_ARTIFACTS["flan_templates"].mirror_path)
    for name in dict.fromkeys([*P.data.eval_prompt_sets, P.evaluate.prompt_set]):
        if name in JSON_ARTIFACTS:
            files += [root / JSON_ARTIFACTS[name].mirror_path] if root is not None else []
        else:
            files.append(Path(name))
    return [f for f in files if f.is_file()]


def data_key(P: "Params") -> dict[str, Any]:
    """What built data depends on beyond the parameters: source, digest of the files read, format version.

    The digest covers each file's name (inside the mirror for mirror files, so a moved mirror keeps its key) and
    bytes: a mirror whose files differ gets another key, a copy of the same files the same one."""
    import hashlib

    root = resolve_mirror(P.run.mirror)
    h = hashlib.sha256()
    for f in source_files(P):
        name = f.relative_to(root).as_posix() if root is not None and f.is_relative_to(root) else str(f)
        h.update(name.encode() + b"\0")
        update_digest(h, f)
    return {"source": source_key(P.run.mirror), "source_digest": h.hexdigest()[:16],
            "format_version": DATA_FORMAT_VERSION}


def built_files(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of every file below ``folder`` (by relative POSIX path), as the build report keeps them."""
    import hashlib

    return {f.relative_to(folder).as_posix(): {"bytes": f.stat().st_size,
                                               "sha256": update_digest(hashlib.sha256(), f).hexdigest()}
            for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "build_report.json")}


def _damaged(folder: Path, recorded: dict[str, dict[str, Any]]) -> str:
    """The first built file that no longer matches the build report's record ('' when all do)."""
    import hashlib

    for rel, want in recorded.items():
        f = folder / rel
        size = f.stat().st_size if f.is_file() else None
        if size != want["bytes"]:
            got = "missing" if size is None else f"{size} bytes"
            return f"{f} is {got}, its build report says {want['bytes']} (cut short or changed after the build)"
        if update_digest(hashlib.sha256(), f).hexdigest() != want["sha256"]:
            return f"{f} differs from its build report's SHA-256 (changed after the build)"
    return ""


def _read_report(folder: Path) -> Optional[dict[str, Any]]:
    """``folder/build_report.json`` (None when missing or unreadable)."""
    try:
        return json.loads((folder / "build_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _built_from(folder: Path, key: dict[str, Any]) -> bool:
    """Whether the build report in ``folder`` records the inputs ``key`` (:func:`data_key`)."""
    report = _read_report(folder)
    return report is not None and all(report.get(k) == v for k, v in key.items())


def _stale(P: "Params") -> str:
    """Why the data in ``P.data_dir`` cannot be reused ('' when it can): other inputs, or a built file that no longer
    matches the build report."""
    report = _read_report(P.data_dir)
    if report is None:
        return "its build_report.json is missing or unreadable"
    now = data_key(P)
    changed = [f"{k} {report.get(k)!r} -> {v!r}" for k, v in now.items() if report.get(k) != v]
    if changed:
        return "built from other inputs: " + "; ".join(changed)
    if not isinstance(report.get("files"), dict):
        return "its build report records no file digests (built by an older version), so it cannot be verified"
    return _damaged(P.data_dir, report["files"])
