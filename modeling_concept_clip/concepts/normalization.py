"""The deduplication key and the stable integer identity of a concept; caption checks."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Any

# Leading words that do not change the concept; stripped for deduplication and the integer identity.
LEADING_DETERMINERS = frozenset(
    "a an the this that these those some any each every another all both such "
    "my your his her its our their whose".split()
)

INVALID_REASONS = ("missing", "not_a_string", "empty", "too_long")

_WHITESPACE = re.compile(r"\s+")
# Punctuation stripped from the ends of a normalised concept (inner hyphens and apostrophes stay).
_EDGE_PUNCTUATION = "\"'`.,;:!?()[]{}<>*_~|/\\-–—“”‘’«»"


def normalize_concept(text: str) -> str:
    """The deduplication key of a concept: lowercased, single-spaced, edge punctuation and leading
    determiners/possessives removed ("The  red couch." -> "red couch"). Numbers stay: "two dogs" != "dogs"."""
    words = _WHITESPACE.sub(" ", text.lower()).strip().strip(_EDGE_PUNCTUATION).split(" ")
    start = 0
    while start < len(words) - 1 and words[start] in LEADING_DETERMINERS:
        start += 1
    return " ".join(words[start:]).strip(_EDGE_PUNCTUATION).strip()


def concept_id(text: str) -> int:
    """A stable non-negative int64 identity of a concept, equal for texts with the same normalised form.

    BLAKE2b (8 bytes) of the UTF-8 normalised text with the top bit cleared, so the value is the same in every
    process and run (unlike Python's salted `hash`) and fits a `torch.LongTensor`. With 63 bits, the chance of
    any collision among 10 million distinct concepts is about 5e-6.
    """
    digest = hashlib.blake2b(normalize_concept(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def concept_ids(concepts: Iterable[str]) -> list[int]:
    """[`concept_id`] of every concept."""
    return [concept_id(text) for text in concepts]


def clean_caption(text: str) -> str:
    """Collapse runs of whitespace (newlines, tabs) to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def check_caption(value: Any, max_chars: int = 2000) -> str | None:
    """Why `value` is not a usable caption (one of [`INVALID_REASONS`]), or `None` when it is."""
    if value is None:
        return "missing"
    if not isinstance(value, str):
        return "not_a_string"
    if not value.strip():
        return "empty"
    if len(value) > max_chars:
        return "too_long"
    return None
