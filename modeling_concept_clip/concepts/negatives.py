"""Rule-based hard negatives from a caption's concepts: one attribute exchanged between two of its noun phrases.

NegCLIP (Yuksekgonul et al., ICLR 2023) fine-tunes CLIP with, for each caption, a negative caption whose words were
swapped, so that a bag of words can no longer tell the two apart. This module makes the attribute swap from the noun
phrases that the concept extractor already gives (spaCy, caption wording kept, the head noun last), with string
operations only: no second parse, so the negatives are made in the collator from the cached concepts column, for any
captions (web alt-text as well as the shapes world's; the shapes world's generator labels are never used).

The rule (`swap_negative`, version `HARD_NEGATIVE_RULES_VERSION`):

1. **Noun phrases.** The caption's concepts found in the caption, at word boundaries, in caption order (whitespace
   runs collapsed first, as the extractor does). A concept not found verbatim (e.g. the whole-caption fallback of a
   caption without noun phrases) is not a phrase.
2. **Attributes of a phrase.** Its words without the leading determiners (`normalization.LEADING_DETERMINERS`: "a",
   "the", "some", "his", ...); a partitive "a cup of hot coffee" counts from its last "of" ("hot coffee"). The last
   word is the head noun; the words before it are the phrase's modifiers, less connectives ("and", "or", "&"),
   possessives ("man's": another noun, not an attribute), numbers ("two", "3": counts, not attributes) and tokens
   without a letter. So "a big red stripy circle" has the attributes big, red, stripy; "a black and white dog" has
   black, white; "a dog" has none. Edge punctuation of a word ("big,") stays where it is.
3. **Candidate swaps.** For every pair of phrases, the attributes at the same distance from their head nouns (in
   English the modifier nearest the noun is most often of the same kind: colour next to colour, size before it),
   where the two words differ and neither already modifies the other phrase ("a red and white dog" / "a red cat"
   cannot swap "white" for "red"). Pairs of phrases with as many attributes are preferred (their aligned attributes
   are most likely of one kind, e.g. the objects of a shapes-world scene rather than an object and "a gray
   background"); other pairs are used only when no such pair has a candidate.
4. **One negative per caption**: the candidate picked by a hash of the seed and the caption (BLAKE2b, the same in
   every process and run; the same caption always gets the same negative under one seed), its two words exchanged.
   An article "a"/"an" right before an exchanged word follows its new word ("an old bench" / "a tall tree" ->
   "a tall bench" / "an old tree"), so that grammar does not give the negative away. A caption without a candidate
   (fewer than two phrases with attributes, or only equal attributes) gets none.

Example: "a big red circle and a small blue square on a gray background" has the phrases "a big red circle" (big,
red), "a small blue square" (small, blue) and "a gray background" (gray); the equal-length pair gives the candidates
big/small and red/blue, so the negative is "a small red circle and a big blue square on a gray background" or "a big
blue circle and a small red square on a gray background", depending on the seed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .normalization import _EDGE_PUNCTUATION, LEADING_DETERMINERS, clean_caption

# Bump whenever a change to the rule changes which negative a caption gets.
HARD_NEGATIVE_RULES_VERSION = "1"
HARD_NEGATIVE_MODES = ("none", "swap")

_CONNECTIVES = frozenset({"and", "or", "&", "nor", "but"})
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen "
    "eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand dozen".split()
)
_WORD = re.compile(r"\S+")
_HAS_LETTER = re.compile(r"[^\W\d_]")


@dataclass(frozen=True)
class Attribute:
    """A modifier of a noun phrase: its text (edge punctuation removed) and its character span in the caption."""

    text: str
    start: int
    end: int


def _is_attribute(word: str) -> bool:
    lower = word.lower()
    if lower in _CONNECTIVES or lower in LEADING_DETERMINERS or lower in _NUMBER_WORDS or lower.isdigit():
        return False
    if lower.endswith(("'s", "’s", "'", "’")):  # a possessor: "a man's hat"
        return False
    return bool(_HAS_LETTER.search(word))


def phrase_attributes(phrase: str, offset: int = 0) -> list[Attribute]:
    """The attributes of one noun phrase, in phrase order (rule 2 of the module docstring).

    Args:
        phrase: a concept, as the extractor gives it (the head noun last).
        offset: the phrase's character position in its caption (added to the spans).
    """
    words = [(match.group(), match.start()) for match in _WORD.finditer(phrase)]
    lowers = [word.lower().strip(_EDGE_PUNCTUATION) for word, _ in words]
    start = max((i + 1 for i, lower in enumerate(lowers) if lower == "of"), default=0)
    while start < len(words) and lowers[start] in LEADING_DETERMINERS:
        start += 1
    attributes = []
    for word, position in words[start:-1]:  # the last word is the head noun
        core = word.strip(_EDGE_PUNCTUATION)
        if not core or not _is_attribute(core):
            continue
        core_start = position + word.index(core)
        attributes.append(Attribute(core, offset + core_start, offset + core_start + len(core)))
    return attributes


def caption_phrases(caption: str, concepts: Sequence[str]) -> list[list[Attribute]]:
    """The attributes of each concept found in `caption` (rule 1), in caption order; `caption` must already be
    whitespace-collapsed (`clean_caption`). A concept is searched after the previous one found, at word boundaries."""
    phrases, cursor = [], 0
    for concept in concepts:
        concept = clean_caption(concept)
        if not concept:
            continue
        position = cursor
        while (position := caption.find(concept, position)) >= 0:
            end = position + len(concept)
            before = caption[position - 1] if position else " "
            after = caption[end] if end < len(caption) else " "
            if not before.isalnum() and not after.isalnum():
                break
            position += 1
        if position < 0:
            continue
        phrases.append(phrase_attributes(concept, position))
        cursor = position + len(concept)
    return phrases


def swap_candidates(phrases: list[list[Attribute]]) -> list[tuple[Attribute, Attribute]]:
    """The candidate swaps of rule 3, preferred ones only when there are any."""
    preferred, others = [], []
    for i, first in enumerate(phrases):
        for second in phrases[i + 1 :]:
            first_words = {a.text.lower() for a in first}
            second_words = {a.text.lower() for a in second}
            for k in range(1, min(len(first), len(second)) + 1):
                a, b = first[-k], second[-k]
                if a.text.lower() == b.text.lower() or a.text.lower() in second_words or b.text.lower() in first_words:
                    continue
                (preferred if len(first) == len(second) else others).append((a, b))
    return preferred or others


def _replace(caption: str, attribute: Attribute, word: str) -> list[tuple[int, int, str]]:
    """The edits that put `word` in place of `attribute`: the word, and a preceding "a"/"an" made to agree."""
    edits = [(attribute.start, attribute.end, word)]
    before = re.search(r"(?:^|(?<=\s))(an?|An?)\s+$", caption[: attribute.start])
    if before is not None:
        article = before.group(1)
        agreed = (
            ("an" if word[0].lower() in "aeiou" else "a")
            if article.islower()
            else ("An" if word[0].lower() in "aeiou" else "A")
        )
        edits.append((before.start(1), before.end(1), agreed))
    return edits


def _pick(count: int, seed: int, caption: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x00{caption}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def swap_negative(caption: str, concepts: Sequence[str], seed: int = 0) -> str | None:
    """One hard negative of `caption`: an attribute exchanged between two of its noun phrases, or `None` when there
    is nothing to swap (the rule: module docstring).

    Args:
        caption: the caption.
        concepts: its concepts, as the extractor gives them (caption order, the caption's wording).
        seed: picks among the candidate swaps (the same seed and caption always give the same negative).

    Returns:
        The negative caption (whitespace-collapsed), or `None`.

    Example:

    ```python
    >>> from modeling_concept_clip.concepts.negatives import swap_negative

    >>> swap_negative("a red couch next to a blue lamp", ["a red couch", "a blue lamp"])
    'a blue couch next to a red lamp'
    >>> swap_negative("a dog on a red couch", ["a dog", "a red couch"]) is None  # one phrase has no attribute
    True

    ```
    """
    if not isinstance(caption, str):
        return None
    caption = clean_caption(caption)
    candidates = swap_candidates(caption_phrases(caption, concepts))
    if not candidates:
        return None
    a, b = candidates[_pick(len(candidates), seed, caption)]
    for start, end, text in sorted(_replace(caption, a, b.text) + _replace(caption, b, a.text), reverse=True):
        caption = caption[:start] + text + caption[end:]
    return caption


__all__ = [
    "HARD_NEGATIVE_MODES",
    "HARD_NEGATIVE_RULES_VERSION",
    "Attribute",
    "caption_phrases",
    "phrase_attributes",
    "swap_candidates",
    "swap_negative",
]
