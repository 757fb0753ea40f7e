"""Text formats shared by training and evaluation."""

from __future__ import annotations

#: Alpaca-style format used by the paper's training and evaluation code:
#: "{instruction and input}\n\n### Response:\n{output}".
RESPONSE_MARKER = "\n\n### Response:\n"


def train_prompt(instruction_and_input: str) -> str:
    """The prompt part of a training sequence (the output follows it directly)."""
    return f"{instruction_and_input}{RESPONSE_MARKER}"


def train_text(instruction_and_input: str, output: str) -> str:
    """A full training sequence: prompt then output."""
    return train_prompt(instruction_and_input) + output
