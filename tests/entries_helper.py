"""Small hand-made contrastive datasets with the data-contract columns (no data build needed)."""

from __future__ import annotations

from datasets import Dataset

TASKS = ["rte", "sst2", "cola"]


def make_entries(n: int = 12, tasks: list[str] | None = None) -> Dataset:
    """``n`` entries cycling over ``tasks``; positives paraphrase the template, negatives change the instance."""
    tasks = tasks or TASKS
    rows = []
    for i in range(n):
        task, tpl, answer = tasks[i % len(tasks)], i % 3, ["yes", "no"][i % 2]
        rows.append(dict(
            entry_id=i, task=task, template_id=tpl, pos_template_id=(tpl + 1) % 3,
            instance_id=f"{task}-{i}", neg_instance_id=f"{task}-{i + 1000}",
            prompt=f"{task} template {tpl}: does sentence {i} hold? OPTIONS: yes, no",
            target=answer,
            pos_prompt=f"Answer yes or no ({task}, wording {tpl + 1}). Sentence {i}: does it hold?",
            neg_prompt=f"{task} template {tpl}: does sentence {i + 1000} hold? OPTIONS: yes, no",
            neg_target=["no", "yes"][i % 2], options=["yes", "no"],
        ))
    return Dataset.from_list(rows)
