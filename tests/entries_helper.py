"""Small hand-made contrastive datasets with the data-contract columns (no data build needed)."""

from __future__ import annotations

from datasets import Dataset

TASKS = ["rte", "sst2", "cola"]


def make_entries(n: int = 12, tasks: list[str] | None = None) -> Dataset:
    """``n`` entries in pairs of mutual hard negatives (entries 2k and 2k+1: same task and template, each the
    other's negative), pairs cycling over ``tasks``; positives paraphrase the template. An odd ``n`` leaves the
    last entry without its partner (its negative is then an instance outside the data)."""
    tasks = tasks or TASKS
    rows = []

    def prompt(task: str, tpl: int, i: int) -> str:
        return f"{task} template {tpl}: does sentence {i} hold? OPTIONS: yes, no"

    for i in range(n):
        k = i // 2
        task, tpl, answer = tasks[k % len(tasks)], k % 3, ["yes", "no"][i % 2]
        partner = i ^ 1 if (i ^ 1) < n else i + 1000
        rows.append(dict(
            entry_id=i, task=task, template_id=tpl, pos_template_id=(tpl + 1) % 3,
            instance_id=f"{task}-{i}", neg_instance_id=f"{task}-{partner}",
            prompt=prompt(task, tpl, i), target=answer,
            pos_prompt=f"Answer yes or no ({task}, wording {tpl + 1}). Sentence {i}: does it hold?",
            neg_prompt=prompt(task, tpl, partner), neg_target=["yes", "no"][partner % 2], options=["yes", "no"],
        ))
    return Dataset.from_list(rows)
