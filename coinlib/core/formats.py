"""Text formats shared by training and evaluation: the one declaration of the input formats and their markers.

``train``  "{instruction and input}\\n\\n### Response:\\n{output}": the Alpaca-style format the paper's training
           code writes (:data:`RESPONSE_MARKER` between prompt and output);
``paper``  "{instruction}{content}### Response:": the paper's evaluation input (:data:`RESPONSE_HEADER` appended);
``chat``   the tokenizer's chat template with instruction + content as the user turn.
"""

from __future__ import annotations

from typing import Literal

#: The marker both formats end the prompt with.
RESPONSE_HEADER = "### Response:"
#: Training's separator between prompt and output.
RESPONSE_MARKER = f"\n\n{RESPONSE_HEADER}\n"
#: Model input formats (``evaluate.input_format``, a study's ``formats``).
INPUT_FORMATS: tuple[str, ...] = ("paper", "train", "chat")
InputFormat = Literal[INPUT_FORMATS]


def train_prompt(instruction_and_input: str) -> str:
    """The prompt part of a training sequence (the output follows it directly)."""
    return f"{instruction_and_input}{RESPONSE_MARKER}"


def train_text(instruction_and_input: str, output: str) -> str:
    """A full training sequence: prompt then output."""
    return train_prompt(instruction_and_input) + output


def paper_prompt(instruction_and_content: str) -> str:
    """The paper's evaluation input: instruction + content, then the response header (no separator)."""
    return f"{instruction_and_content}{RESPONSE_HEADER}"


def format_input(instruction: str, content: str, fmt: InputFormat, tokenizer=None) -> str:
    """Model input for one instance.

    ``paper``: instruction + content + "### Response:" (the paper's evaluation code); ``train``: the training
    format of our models (:func:`train_prompt`); ``chat``: the tokenizer's chat template with instruction + content
    as the user turn.
    """
    text = instruction + content
    if fmt == "paper":
        return paper_prompt(text)
    if fmt == "train":
        return train_prompt(text)
    if fmt == "chat":
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise ValueError("input_format 'chat' needs a tokenizer with a chat template; use 'paper' or 'train'")
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
    raise ValueError(f"unknown input format {fmt!r}; use one of {', '.join(map(repr, INPUT_FORMATS))}")
