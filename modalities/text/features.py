"""Scalar features of a text input: the same function describes training prompts and
production requests, so the monitor's drift tests compare like with like. Pure Python."""

from __future__ import annotations


def text_features(text: str) -> dict[str, float]:
    """Length, word count and character-class mix of `text` (ratios are 0 for empty text)."""
    length = len(text)
    words = text.split()
    if length == 0:
        return {
            "chars": 0.0,
            "words": 0.0,
            "digit_ratio": 0.0,
            "upper_ratio": 0.0,
            "non_ascii_ratio": 0.0,
            "mean_word_length": 0.0,
        }
    return {
        "chars": float(length),
        "words": float(len(words)),
        "digit_ratio": sum(c.isdigit() for c in text) / length,
        "upper_ratio": sum(c.isupper() for c in text) / length,
        "non_ascii_ratio": sum(ord(c) > 127 for c in text) / length,
        "mean_word_length": sum(map(len, words)) / len(words) if words else 0.0,
    }
