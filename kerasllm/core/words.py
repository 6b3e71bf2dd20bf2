"""Plurals and articles for the sentences kerasllm prints ("1 epoch", "2 epochs", "an image-classification model")."""

from __future__ import annotations

VOWEL_SOUNDS = tuple("aeiou")


def count(number: int, noun: str, plural: str | None = None) -> str:
    """`count(1, "epoch")` → "1 epoch"; `count(2, "epoch")` → "2 epochs"; thousands separated."""
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


def were(number: int) -> str:
    return "was" if number == 1 else "were"


def a(phrase: str) -> str:
    """The phrase with its article: "a text-generation model", "an image-classification model"."""
    return f"{'an' if phrase[:1].lower() in VOWEL_SOUNDS else 'a'} {phrase}"
