"""Perturbation levels and instruction groups: the one declaration of their names.

A *level* is how :mod:`coinlib.perturb` changes an instruction; a *group* is the name a prompt set (and every
evaluation table) files the variants under. The paper's prompt set has the groups clean, deepwordbug (character
level), textfooler (word level), checklist (sentence level) and semantic; stresstest is a level beyond the paper.
"""

from __future__ import annotations

#: Perturbation levels of :func:`coinlib.perturb.perturb_instruction` (also ``data.extra_positive_levels``).
LEVELS: tuple[str, ...] = ("character", "word", "sentence", "stresstest", "semantic")
#: Prompt-set group written for each level (the paper's names where the paper has the level).
GROUP_OF: dict[str, str] = {"character": "deepwordbug", "word": "textfooler", "sentence": "checklist",
                            "stresstest": "stresstest", "semantic": "semantic"}
#: Level of each perturbed group.
LEVEL_OF: dict[str, str] = {group: level for level, group in GROUP_OF.items()}
#: The paper's evaluation groups (``coin_eval_prompts``), in its order: the unperturbed instructions first.
EVAL_GROUPS: tuple[str, ...] = ("clean", "deepwordbug", "textfooler", "checklist", "semantic")
#: Group label of rows pooled over every group.
ALL_GROUPS = "average"
#: How figures and notebooks name a group: the level and the attack it imitates.
GROUP_LABELS: dict[str, str] = {
    "clean": "clean", "deepwordbug": "character (DeepWordBug)", "textfooler": "word (TextFooler)",
    "checklist": "sentence (CheckList)", "stresstest": "sentence (StressTest)", "semantic": "semantic",
    ALL_GROUPS: "average",
}
#: Levels written when none are named (``python -m coinlib.perturb``, :func:`coinlib.perturb.promptset.build_prompt_set`):
#: the paper's three rule-based attacks (semantic needs an instruction model; stresstest is beyond the paper).
RULE_LEVELS: tuple[str, ...] = ("character", "word", "sentence")
