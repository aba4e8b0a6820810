"""Concept extraction: split captions into short concept-centric noun phrases with spaCy.

C2LIP (PAPER.md, "Concepts") aligns every image with the noun phrases of its caption ("a red couch", "a blue
lamp") as well as with the whole caption. The authors' release asks a 3.8B-parameter LLM for them; the paper
says standard NLP software, so this package uses spaCy noun chunks and cleans them the way the release's
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
Deduplication and the integer identity ([`concept_id`]) use [`normalize_concept`] instead, which
lowercases and drops leading determiners, so "A dog" and "the dog" are one concept.

Throughput: the pipeline loads without the components noun chunks do not need (`ner`, `lemmatizer`;
the `attribute_ruler`, which maps tags to the POS that noun chunks read, is applied by a compiled lookup),
repeated captions are parsed once, and parallel workers return plain strings rather than spaCy `Doc` objects (pickling `Doc`s back
to the parent is what makes `nlp.pipe(n_process=...)` slower than one process on a small machine).

Modules, one concern each:

- `config`: [`ConceptExtractorConfig`] and the default word lists of the rules;
- `normalization`: [`normalize_concept`], [`concept_id`], caption checks;
- `pipeline`: finding and loading the spaCy pipeline, [`FastPosMapper`];
- `rules`: chunking and cleaning a parsed `Doc` ([`concepts_from_doc`]);
- `extractor`: [`ConceptExtractor`], in-process or with worker processes;
- `column`: the `datasets` glue ([`add_concepts_column`]);
- `readers`: captions out of JSON Lines, CSV, parquet, `datasets` folders and WebDataset tar shards;
- `shards`: shard patterns, the partition of shards over jobs, and the per-shard concepts files;
- `scoring`: precision and recall against hand-labelled concepts;
- `negatives`: hard negatives for the NegCLIP baseline, an attribute exchanged between two concepts of a caption
  ([`swap_negative`]).
"""

from .column import ConceptColumnFunction, add_concepts_column
from .config import (
    DEFAULT_BOILERPLATE_MODIFIERS,
    DEFAULT_BOILERPLATE_NOUNS,
    DEFAULT_BOILERPLATE_PREFIXES,
    DEFAULT_GENERIC_NOUNS,
    DEFAULT_PARTITIVE_NOUNS,
    DEFAULT_PRONOUN_NOUNS,
    EXTRACTION_RULES_VERSION,
    ConceptExtractorConfig,
)
from .extractor import ConceptExtractor, extract_concepts
from .negatives import swap_negative
from .normalization import INVALID_REASONS, check_caption, clean_caption, concept_id, concept_ids, normalize_concept
from .pipeline import (
    DEFAULT_SPACY_MODELS,
    FastPosMapper,
    SpacyModelNotFoundError,
    load_spacy_pipeline,
    resolve_spacy_model,
    spacy_model_fingerprint,
)
from .rules import concepts_from_doc, parser_chunks, pos_chunks
from .scoring import score_concepts

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
    "swap_negative",
]
