"""Hidden representations (model inference) of one instruction and its perturbed variants (paper section 5.1, Figure 4).

For N instances of one task (the evaluation's own sample) and the instruction at index ``analysis.represent_instruction``
of each group (clean, deepwordbug, textfooler, checklist, semantic), the input is rendered as in evaluation and the
model's final hidden state (after the final norm) at the last real token is taken, for the CIT and the COIN model.
Two numbers summarise what the UMAP picture shows, per model:

- ``mean_cos``: mean cosine similarity between an instance's clean representation and its representation under
  a perturbed instruction, per group (higher = the variant is represented more like the clean instruction);
- ``silhouette``: silhouette score of the perturbation groups (cosine distance, in the hidden space, not in UMAP's);
  near 1 = groups form separate clusters, near 0 = they overlap (what COIN aims for).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from coinlib.core.formats import format_input
from coinlib.core.groups import EVAL_GROUPS
from coinlib.core.models import load_model, load_tokenizer
from coinlib.core.pooling import last_token_pool
from coinlib.core.promptsets import load_prompt_set
from coinlib.core.tasks import load_task

if TYPE_CHECKING:
    from coinlib.core.params import Params

CLEAN = "clean"


@dataclass
class Representations:
    """Rows of ``meta`` (role, run, group, instance_id, label) aligned with the rows of ``states`` [rows, dim]."""

    meta: pd.DataFrame
    states: np.ndarray

    def of(self, role: str) -> "Representations":
        keep = (self.meta["role"] == role).to_numpy()
        return Representations(self.meta[keep].reset_index(drop=True), self.states[keep])


# ------------------------------------------------------------------------------------------------ inputs
def instruction_variants(prompts: dict[str, dict[str, list[str]]], task: str, index: int,
                         groups: Sequence[str] = EVAL_GROUPS) -> dict[str, str]:
    """The instruction at ``index`` of each group for ``task`` (a prompt set as :func:`coinlib.core.promptsets.load_prompt_set`)."""
    out = {}
    for group in groups:
        instructions = prompts.get(group, {}).get(task)
        if not instructions:
            raise ValueError(f"the prompt set has no {group!r} instructions for task {task!r}; "
                             f"fix analysis.represent_task or evaluate.prompt_set")
        if index >= len(instructions):
            raise ValueError(f"analysis.represent_instruction is {index}, but group {group!r} has only "
                             f"{len(instructions)} instructions for {task!r}; use 0..{len(instructions) - 1}")
        out[group] = instructions[index]
    return out


def variant_inputs(instances: pd.DataFrame, variants: dict[str, str], render) -> pd.DataFrame:
    """One row per group x instance: ``group, instance_id, label, text`` with ``text = render(instruction, content)``."""
    rows = [
        {"group": g, "instance_id": r.instance_id, "label": r.label, "text": render(instr, r.content)}
        for g, instr in variants.items() for r in instances.itertuples(index=False)
    ]
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ hidden states
@torch.no_grad()
def last_token_states(model, tokenizer, texts: Sequence[str], batch_size: int = 16, add_special_tokens: bool = True,
                      desc: str = "hidden states") -> np.ndarray:
    """Final-layer hidden state (after the final norm) at each text's last real token, ``[len(texts), dim]``."""
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([-len(t) for t in texts], kind="stable")  # similar lengths together: less padding
    out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
    for start in tqdm(range(0, len(texts), batch_size), desc=desc, leave=False):
        idx = order[start:start + batch_size]
        enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                        add_special_tokens=add_special_tokens).to(device)
        hidden = model(**enc, output_hidden_states=True).hidden_states[-1]
        out[idx] = last_token_pool(hidden, enc["attention_mask"]).float().cpu().numpy()
    return out


# ------------------------------------------------------------------------------------------------ metrics
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def clean_similarity(reps: Representations) -> pd.DataFrame:
    """Per role and perturbed group: mean (and std) over instances of cos(clean state, perturbed state)."""
    rows = []
    for role in dict.fromkeys(reps.meta["role"]):
        sub = reps.of(role)
        by_id = {g: dict(zip(frame["instance_id"], frame.index)) for g, frame in sub.meta.groupby("group", sort=False)}
        if CLEAN not in by_id:
            raise ValueError(f"no {CLEAN!r} representations for {role!r}; the clean group is the reference")
        for group, ids in by_id.items():
            if group == CLEAN:
                continue
            common = [i for i in ids if i in by_id[CLEAN]]
            a = _unit(sub.states[[by_id[CLEAN][i] for i in common]])
            b = _unit(sub.states[[ids[i] for i in common]])
            cos = np.sum(a * b, axis=1)
            rows.append({"role": role, "group": group, "mean_cos": float(cos.mean()), "std_cos": float(cos.std()),
                         "n_instances": len(common)})
    return pd.DataFrame(rows)


def group_separation(reps: Representations) -> pd.DataFrame:
    """Per role: silhouette score (cosine) of the perturbation groups in the hidden space."""
    from sklearn.metrics import silhouette_score

    rows = []
    for role in dict.fromkeys(reps.meta["role"]):
        sub = reps.of(role)
        rows.append({"role": role, "silhouette": float(silhouette_score(sub.states, sub.meta["group"], metric="cosine"))})
    return pd.DataFrame(rows)


def representation_metrics(reps: Representations) -> pd.DataFrame:
    """One row per role x perturbed group: ``mean_cos``, ``std_cos``, ``n_instances`` and the role's ``silhouette``."""
    return clean_similarity(reps).merge(group_separation(reps), on="role")


def umap_points(reps: Representations, seed: int = 0, n_neighbors: int = 15) -> pd.DataFrame:
    """2-D UMAP per role (fitted separately, seeded): ``meta`` plus ``umap_x``, ``umap_y``."""
    import umap  # ~10 s of numba JIT on first use in a process

    parts = []
    for role in dict.fromkeys(reps.meta["role"]):
        sub = reps.of(role)
        reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, len(sub.states) - 1), metric="cosine",
                            random_state=seed, n_jobs=1)
        xy = reducer.fit_transform(sub.states)
        parts.append(sub.meta.assign(umap_x=xy[:, 0], umap_y=xy[:, 1]))
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------------------------ pipeline
def extract(P: "Params", roles: dict[str, tuple[str, Path | None]]) -> Representations:
    """Representations for each ``role -> (run, adapter folder)``; adapter None means the base model without adapter
    (:func:`coinlib.results.inputs.role_adapters` gives ``analysis.cit_run`` and ``analysis.coin_run``, checked).

    Loads the base model once per distinct run with that run's adapter.
    """

    task, fmt = P.analysis.represent_task, P.evaluate.input_format
    variants = instruction_variants(load_prompt_set(P.evaluate.prompt_set, P.run.mirror), task,
                                    P.analysis.represent_instruction)
    instances = load_task(task, P.analysis.represent_n, P.run.mirror, P.evaluate.sample)
    tokenizer = load_tokenizer(P.model.name, P.model.revision, P.model.trust_remote_code)
    inputs = variant_inputs(instances, variants, lambda instr, content: format_input(instr, content, fmt, tokenizer))
    cache: dict[str, np.ndarray] = {}
    for role, (run, adapter) in roles.items():
        if run not in cache:
            model, tokenizer = _load(P, adapter)
            cache[run] = last_token_states(model, tokenizer, list(inputs["text"]), P.evaluate.batch_size,
                                           add_special_tokens=fmt != "chat", desc=f"{role} ({run})")
            del model
    meta = pd.concat([inputs.assign(role=role, run=run) for role, (run, _) in roles.items()], ignore_index=True)
    states = np.concatenate([cache[run] for run, _ in roles.values()])
    return Representations(meta[["role", "run", "group", "instance_id", "label"]], states)


def _load(P: "Params", adapter):
    """Base model as ``P.model`` says, with ``adapter`` (a run's adapter folder) instead of its own when given."""
    torch.manual_seed(P.run.seed)
    model_params = P.model.model_copy(update={"adapter": str(adapter)}) if adapter else P.model
    return load_model(model_params, device="cuda" if torch.cuda.is_available() else None)
