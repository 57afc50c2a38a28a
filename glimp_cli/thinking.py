"""The think block of a reasoning model's prompt: opened once, closed by the model or for it.

A reasoning model thinks between `<think>` and `</think>`, then answers. Both models of a pair hold
the same transcript after their own prompt, and that transcript starts inside the think block, so
each prompt must end with the block opened exactly once. Templates differ: Qwen3's opens no block
(and writes an empty one when thinking is switched off); R1-Distill's opens it itself (and closes it
at once unless `enable_thinking` is passed). Templates are therefore rendered with thinking switched
on, and the tag is appended only where the rendered prompt does not already end with it.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
AUTO = None  # think_prefix unset: the chat template decides


@dataclass(frozen=True)
class ThinkLayout:
    """How a model's thinking is delimited in its transcript."""

    prefix: str  # what ends the prompt, opening the block ("<think>\n")
    close: str  # the tag that ends the thinking ("</think>")

    @property
    def forced_close(self) -> str:
        """What the answering model is given when the thinking ended without the close tag (the original's)."""
        return f"\n{self.close}\n\n"


def template_thinks(template: str | None) -> bool:
    """Whether a chat template belongs to a reasoning model: it lays out a think block."""
    return bool(template) and THINK_OPEN in template and THINK_CLOSE in template


def think_layout(*, think_prefix: str | None, template: str | None) -> ThinkLayout | None:
    """The model's think layout: from models.yaml's think_prefix ("" = none), else from its chat template."""
    if think_prefix is AUTO:
        return ThinkLayout(prefix=THINK_OPEN + "\n", close=THINK_CLOSE) if template_thinks(template) else None
    if not think_prefix:
        return None
    tag = think_prefix.strip()
    close = "</" + tag[1:] if tag.startswith("<") and not tag.startswith("</") else THINK_CLOSE
    return ThinkLayout(prefix=think_prefix, close=close)


def open_think_block(prompt: str, layout: ThinkLayout | None) -> str:
    """The prompt ending with the think block opened exactly once."""
    if layout is None or prompt.endswith(layout.prefix):
        return prompt
    stripped = layout.prefix.rstrip()
    if stripped and prompt.endswith(stripped):  # opened without the newline ("<think>"): complete it
        return prompt + layout.prefix[len(stripped) :]
    return prompt + layout.prefix
