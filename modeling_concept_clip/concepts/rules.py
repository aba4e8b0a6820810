"""The extraction rules: noun-phrase chunking and cleaning, pure functions of a parsed spaCy `Doc`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import ConceptExtractorConfig
from .normalization import LEADING_DETERMINERS, clean_caption, normalize_concept

if TYPE_CHECKING:
    from spacy.tokens import Doc, Token


@dataclass(frozen=True)
class _Rules:
    """The config's word lists as sets, built once per extractor."""

    boilerplate_nouns: frozenset[str]
    boilerplate_tail: frozenset[str]
    boilerplate_prefixes: tuple[tuple[str, ...], ...]
    generic_nouns: frozenset[str]
    pronoun_nouns: frozenset[str]
    partitive_nouns: frozenset[str]

    @classmethod
    def from_config(cls, config: ConceptExtractorConfig) -> _Rules:
        return cls(
            boilerplate_nouns=frozenset(config.boilerplate_nouns),
            boilerplate_tail=frozenset(config.boilerplate_nouns) | frozenset(config.boilerplate_modifiers),
            # Longest first, so "stock photography" wins over a shorter prefix.
            boilerplate_prefixes=tuple(
                sorted((tuple(p.split(" ")) for p in config.boilerplate_prefixes), key=len, reverse=True)
            ),
            generic_nouns=frozenset(config.generic_nouns),
            pronoun_nouns=frozenset(config.pronoun_nouns),
            partitive_nouns=frozenset(config.partitive_nouns),
        )


@functools.lru_cache(maxsize=32)
def _rules_for(config: ConceptExtractorConfig) -> _Rules:
    return _Rules.from_config(config)


def _word_in(token: Token, words: frozenset[str]) -> bool:
    """`token` (lowercased, or its plural stripped of the final -s/-es) is one of `words`."""
    lower = token.lower_
    if lower in words:
        return True
    # Plurals: "photos", "glasses", "boxes".
    return (
        len(lower) > 3
        and lower.endswith("s")
        and (lower[:-1] in words or (lower.endswith("es") and lower[:-2] in words))
    )


def _is_nominal(token: Token) -> bool:
    return token.pos_ in ("NOUN", "PROPN")


def _is_edge_junk(token: Token) -> bool:
    return token.is_punct or token.is_space


def _is_leading_filler(doc: Doc, i: int, end: int) -> bool:
    """Whether token `i`, which opens the phrase `doc[i:end]`, is not part of the noun phrase: an adverb or a
    conjunction of the sentence ("then a cat", "also two dogs", "and a dog") or an adjective before the determiner
    ("next a green ball"). Kept: a negation ("not a cat"), a pre-determiner ("all the dogs", "many a man", "both the
    men"), and an adverb that modifies a later word of the phrase other than its noun ("very large dogs")."""
    token = doc[i]
    if token.dep_ in ("neg", "predet", "preconj") or token.tag_ == "PDT":
        return False
    if token.pos_ in ("ADV", "CCONJ", "SCONJ"):
        return not i < token.head.i < end - 1
    return token.pos_ == "ADJ" and i + 1 < end and doc[i + 1].pos_ == "DET"


def parser_chunks(doc: Doc) -> list[tuple[int, int]]:
    """Token ranges `[start, end)` of spaCy's noun chunks; the root is always the last token."""
    return [(chunk.start, chunk.end) for chunk in doc.noun_chunks]


_POS_OPENERS = frozenset({"DET", "NUM", "ADJ", "NOUN", "PROPN"})
_POSSESSIVE_PRONOUNS = frozenset({"my", "your", "his", "her", "its", "our", "their"})


def _pos_can_continue(doc: Doc, i: int, end: int) -> bool:
    """Whether token `i` may extend a noun phrase in the tag-pattern chunker."""
    token = doc[i]
    nxt = doc[i + 1] if i + 1 < end else None
    prev = doc[i - 1]
    pos = token.pos_
    if pos in ("NUM", "ADJ", "NOUN", "PROPN"):
        return True
    if pos == "DET":
        # "all the dogs": a determiner only follows a pre-determiner.
        return prev.pos_ == "DET" and prev.lower_ in ("all", "both", "half")
    if pos == "ADV":
        # "a very large dog", never the "next" of "a couch next to".
        return nxt is not None and nxt.pos_ == "ADJ"
    if pos == "CCONJ":
        # "a black and white dog": adjective coordination only.
        return prev.pos_ == "ADJ" and nxt is not None and nxt.pos_ == "ADJ"
    if pos == "PART" and token.tag_ == "POS":
        # "a man's hat"
        return _is_nominal(prev) and nxt is not None and nxt.pos_ in _POS_OPENERS
    if pos == "PUNCT" and token.text == "-":
        # "a long-haired cat": an in-word hyphen.
        return not prev.whitespace_ and not token.whitespace_ and nxt is not None and nxt.pos_ in _POS_OPENERS
    if pos == "VERB" and token.tag_ in ("VBN", "VBG"):
        # "a parked car", "a smiling woman", but not the "riding" of "a man riding a horse".
        return prev.pos_ in ("DET", "ADJ", "NUM", "ADV") and nxt is not None and nxt.pos_ in ("NOUN", "ADJ")
    return False


def _pos_opens(doc: Doc, i: int) -> bool:
    token = doc[i]
    if token.pos_ in _POS_OPENERS:
        return True
    if token.lower_ in _POSSESSIVE_PRONOUNS and token.pos_ in ("PRON", "DET"):
        return True
    if token.pos_ == "VERB" and token.tag_ in ("VBN", "VBG") and i + 1 < len(doc):
        # "Smiling woman ...", "in parked cars", but not the verb of "children playing soccer".
        starts_phrase = i == 0 or doc[i - 1].pos_ in ("ADP", "PUNCT", "CCONJ")
        return starts_phrase and doc[i + 1].pos_ in ("NOUN", "ADJ")
    return False


def pos_chunks(doc: Doc) -> list[tuple[int, int]]:
    """Noun phrases from POS tags alone (no parser): a run of determiners, numbers, adjectives and nouns that
    ends in a noun; the last noun is the root. Used by `mode="pos"`."""
    chunks = []
    n = len(doc)
    i = 0
    while i < n:
        if not _pos_opens(doc, i):
            i += 1
            continue
        j = i + 1
        while j < n and _pos_can_continue(doc, j, n):
            j += 1
        last_noun = max((k for k in range(i, j) if _is_nominal(doc[k])), default=None)
        if last_noun is None:
            i = j
            continue
        chunks.append((i, last_noun + 1))
        i = last_noun + 1
    return chunks


def _strip_boilerplate_prefix(doc: Doc, start: int, end: int, rules: _Rules) -> int:
    """New start after a leading boilerplate phrase ("[a] stock photo businessman" -> "businessman")."""
    first = start
    while first < end and doc[first].lower_ in LEADING_DETERMINERS:
        first += 1
    words = [doc[k].lower_ for k in range(first, end)]
    for prefix in rules.boilerplate_prefixes:
        if len(prefix) < len(words) and tuple(words[: len(prefix)]) == prefix:
            return first + len(prefix)
    return start


def _clean_chunk(doc: Doc, start: int, end: int, rules: _Rules) -> tuple[int, int] | None:
    """Apply the filtering rules to the noun phrase `doc[start:end]` (root last).

    Returns the cleaned range, or `None` when the chunk is not a concept (pronoun, boilerplate, generic
    positional noun, nothing nominal left).
    """
    while start < end and (_is_edge_junk(doc[start]) or _is_leading_filler(doc, start, end)):
        start += 1
    while end > start and _is_edge_junk(doc[end - 1]):
        end -= 1
    if start >= end:
        return None
    root = doc[end - 1]
    if root.pos_ == "PRON" or root.lower_ in rules.pronoun_nouns:
        return None
    if _word_in(root, rules.generic_nouns):
        return None
    if _word_in(root, rules.boilerplate_nouns):
        # Trim the boilerplate tail; keep what precedes it only if it still ends in a noun.
        while end > start and (_word_in(doc[end - 1], rules.boilerplate_tail) or _is_edge_junk(doc[end - 1])):
            end -= 1
        if end <= start:
            return None
        root = doc[end - 1]
        if not _is_nominal(root) or _word_in(root, rules.generic_nouns) or root.lower_ in rules.pronoun_nouns:
            return None
    start = _strip_boilerplate_prefix(doc, start, end, rules)
    if not any(_is_nominal(doc[k]) for k in range(start, end)):
        return None
    return start, end


def _merge_partitives(doc: Doc, ranges: list[tuple[int, int]], rules: _Rules) -> list[tuple[int, int]]:
    """Join "<quantity/container> of <noun phrase>" into one range: "a group" + "people" -> "a group of people"."""
    if not rules.partitive_nouns:
        return ranges
    merged: list[tuple[int, int]] = []
    k = 0
    while k < len(ranges):
        start, end = ranges[k]
        if (
            k + 1 < len(ranges)
            and _word_in(doc[end - 1], rules.partitive_nouns)
            and end < len(doc)
            and doc[end].lower_ == "of"
            and ranges[k + 1][0] == end + 1
        ):
            merged.append((start, ranges[k + 1][1]))
            k += 2
            continue
        merged.append((start, end))
        k += 1
    return merged


def concepts_from_doc(doc: Doc, config: ConceptExtractorConfig | None = None) -> list[str]:
    """The concepts of one parsed caption, in caption order, deduplicated by [`normalize_concept`]."""
    config = config if config is not None else ConceptExtractorConfig()
    rules = _rules_for(config)
    raw = parser_chunks(doc) if config.mode == "parser" else pos_chunks(doc)
    cleaned = [r for r in (_clean_chunk(doc, s, e, rules) for s, e in raw) if r is not None]
    concepts: list[str] = []
    seen: set[str] = set()
    for start, end in _merge_partitives(doc, cleaned, rules):
        text = clean_caption(doc[start:end].text)
        key = normalize_concept(text)
        if not key or key in seen:
            continue
        seen.add(key)
        concepts.append(text)
        if config.max_concepts is not None and len(concepts) >= config.max_concepts:
            break
    if not concepts and config.fallback == "caption":
        text = clean_caption(doc.text)
        if text:
            concepts.append(text)
    return concepts
