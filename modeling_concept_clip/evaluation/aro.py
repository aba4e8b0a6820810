"""ARO (Yuksekgonul et al., ICLR 2023): VG-Relation, VG-Attribution, and COCO / Flickr30k order.

Public formats (mertyg/vision-language-models-are-bows):
- `visual_genome_relation.json` / `visual_genome_attribution.json`: a list of `{"image_path", "bbox_x", "bbox_y",
  "bbox_w", "bbox_h", "true_caption", "false_caption"}` plus `"relation_name"` (VG-R) or `"attributes": [a, b]`
  (VG-A); images in `images/`. The image is cropped to the box. The official scorer takes `argmax` over
  `[false, true]`, so a tie goes to the false caption: correct means `true > false` (strict). The headline numbers
  are macro accuracies: VG-R over relations, without the symmetric ones listed in ARO's replication notebook;
  VG-A over attribute pairs with at least 25 examples.
- Order: every caption of every test image (COCO / Flickr30k Karpathy test split) against four perturbations
  of itself (shuffled nouns and adjectives; everything but nouns and adjectives shuffled; words shuffled within
  trigrams; trigrams shuffled), all lower-cased and stripped of punctuation by ARO's `pre_caption`. The official
  scorer takes `argmax` over `[true, perturbed...]`: a tie goes to the true caption.

Deviations, both forced by reproducibility: shuffles use a generator seeded by (seed, caption index) instead of
the global random state, and the trigram perturbations tokenise with spaCy (as the two others do) instead of
NLTK's `word_tokenize`. Results are therefore close to, not identical with, published order numbers.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np

from .data import EvaluationDataError, files_version, find_image, read_json, require_fields, require_text
from .embedding import Embedder
from .results import BenchmarkResult, MetricValue
from .retrieval import read_captioned_images
from .spec import BenchmarkConfig, macro_average, require_path
from .sugarcrepe import PreferenceExample, score_preferences

ARO_REPOSITORY = "mertyg/vision-language-models-are-bows"

# Relations whose true and false captions describe the same scene, excluded from VG-Relation's macro accuracy in
# ARO's replication notebook ("Replicate ARO! VG-Relation, VG-Attribution.ipynb").
SYMMETRIC_RELATIONS = (
    "adjusting", "attached to", "between", "bigger than", "biting", "boarding", "brushing", "chewing", "cleaning",
    "climbing", "close to", "coming from", "coming out of", "contain", "crossing", "dragging", "draped over",
    "drinking", "drinking from", "driving", "driving down", "driving on", "eating from", "eating in", "enclosing",
    "exiting", "facing", "filled with", "floating in", "floating on", "flying", "flying above", "flying in",
    "flying over", "flying through", "full of", "going down", "going into", "going through", "grazing in",
    "growing in", "growing on", "guiding", "hanging from", "hanging in", "hanging off", "hanging over",
    "higher than", "holding onto", "hugging", "in between", "jumping off", "jumping on", "jumping over", "kept in",
    "larger than", "leading", "leaning over", "leaving", "licking", "longer than", "looking in", "looking into",
    "looking out", "looking over", "looking through", "lying next to", "lying on top of", "making", "mixed with",
    "mounted on", "moving", "on the back of", "on the edge of", "on the front of", "on the other side of",
    "opening", "painted on", "parked at", "parked beside", "parked by", "parked in", "parked in front of",
    "parked near", "parked next to", "perched on", "petting", "piled on", "playing", "playing in", "playing on",
    "playing with", "pouring", "reaching for", "reading", "reflected on", "riding on", "running in", "running on",
    "running through", "seen through", "sitting behind", "sitting beside", "sitting by", "sitting in front of",
    "sitting near", "sitting next to", "sitting under", "skiing down", "skiing on", "sleeping in", "sleeping on",
    "smiling at", "sniffing", "splashing", "sprinkled on", "stacked on", "standing against", "standing around",
    "standing behind", "standing beside", "standing in front of", "standing near", "standing next to",
    "staring at", "stuck in", "surrounding", "swimming in", "swinging", "talking to", "topped with", "touching",
    "traveling down", "traveling on", "tying", "typing on", "underneath", "wading in", "waiting for",
    "walking across", "walking by", "walking down", "walking next to", "walking through", "working in",
    "working on", "worn on", "wrapped around", "wrapped in", "by", "of", "near", "next to", "with", "beside",
    "on the side of", "around",
)  # fmt: skip


@dataclass
class VGRelationConfig(BenchmarkConfig):
    """ARO VG-Relation. `data_dir` holds `visual_genome_relation.json` and `images/`.

    Attributes:
        exclude_relations: relations left out of `macro_accuracy` (default: ARO's symmetric relations).
    """

    kind = "aro_vg_relation"
    task_type = "image-text-matching"
    task_name = "Relation understanding (ARO)"

    dataset_name: str = "VG-Relation"
    dataset_type: str = ARO_REPOSITORY
    split: str = "test"
    data_dir: str = ""
    annotation_file: str = "visual_genome_relation.json"
    image_dir: str = "images"
    exclude_relations: list[str] = field(default_factory=lambda: list(SYMMETRIC_RELATIONS))

    def __post_init__(self):
        super().__post_init__()
        require_path(self, "data_dir")


@dataclass
class VGAttributionConfig(BenchmarkConfig):
    """ARO VG-Attribution. `data_dir` holds `visual_genome_attribution.json` and `images/`.

    Attributes:
        min_count: attribute pairs with fewer examples are left out of `macro_accuracy` (ARO: 25).
    """

    kind = "aro_vg_attribution"
    task_type = "image-text-matching"
    task_name = "Attribute binding (ARO)"

    dataset_name: str = "VG-Attribution"
    dataset_type: str = ARO_REPOSITORY
    split: str = "test"
    data_dir: str = ""
    annotation_file: str = "visual_genome_attribution.json"
    image_dir: str = "images"
    min_count: int = 25

    def __post_init__(self):
        super().__post_init__()
        require_path(self, "data_dir")


@dataclass
class OrderConfig(BenchmarkConfig):
    """ARO COCO-Order / Flickr30k-Order on a Karpathy or BLIP caption file (see `retrieval.py`).

    Attributes:
        seed: seeds the perturbations (ARO's default seed is 1).
        max_words: `pre_caption` truncation (ARO: 30).
        spacy_model: spaCy pipeline for tokens and part-of-speech tags (default: `en_core_web_sm`, else the
            project's pinned rebuild).
    """

    kind = "aro_order"
    task_type = "image-text-matching"
    task_name = "Word-order sensitivity (ARO)"

    dataset_name: str = "COCO-Order"
    dataset_type: str = ARO_REPOSITORY
    split: str = "test"
    annotation_file: str = ""
    image_root: str | None = None
    seed: int = 1
    max_words: int = 30
    spacy_model: str | None = None

    def __post_init__(self):
        super().__post_init__()
        require_path(self, "annotation_file")


def read_visual_genome(
    data_dir: Path, annotation_file: str, image_dir: str, group_field: str
) -> tuple[list[PreferenceExample], list[str]]:
    """Cropped-image examples (`positives=[true]`, `negatives=[false]`) and the group of each example."""
    path = data_dir / annotation_file
    records = read_json(path)
    if not isinstance(records, list):
        raise EvaluationDataError(f"{path}: expected a JSON list of records")
    boxes = {"bbox_x": (int, float), "bbox_y": (int, float), "bbox_w": (int, float), "bbox_h": (int, float)}
    examples, groups = [], []
    for index, record in enumerate(records):
        context = f"{path}, record {index}"
        require_fields(record, {"image_path": str, **boxes}, context)
        true_caption = require_text(record, "true_caption", context)
        false_caption = require_text(record, "false_caption", context)
        if group_field == "attributes":
            require_fields(record, {"attributes": list}, context)
            if len(record["attributes"]) != 2 or not all(isinstance(a, str) for a in record["attributes"]):
                raise EvaluationDataError(f"{context}: field 'attributes' should hold two strings")
            groups.append("_".join(record["attributes"]))
        else:
            groups.append(require_text(record, group_field, context))
        x, y, w, h = (record[name] for name in boxes)
        image = find_image(record["image_path"], [data_dir / image_dir], context, box=(x, y, x + w, y + h))
        examples.append(PreferenceExample(image, [true_caption], [false_caption]))
    if not examples:
        raise EvaluationDataError(f"{path}: no records")
    return examples, groups


def accuracy_by_group(
    examples: list[PreferenceExample], groups: list[str], embedder: Embedder, desc: str
) -> tuple[float, dict[str, tuple[float, int]]]:
    """Micro accuracy over all examples and `{group: (accuracy, count)}`, with ARO's strict `true > false`."""
    by_group: dict[str, list[PreferenceExample]] = defaultdict(list)
    for example, group in zip(examples, groups):
        by_group[group].append(example)
    accuracies = score_preferences(dict(by_group), embedder, desc=desc)
    total = sum(accuracies[g] * len(e) for g, e in by_group.items()) / len(examples)
    return total, {g: (accuracies[g], len(e)) for g, e in sorted(by_group.items())}


def evaluate_vg_relation(config: VGRelationConfig, embedder: Embedder) -> BenchmarkResult:
    data_dir = Path(config.data_dir)
    examples, relations = read_visual_genome(data_dir, config.annotation_file, config.image_dir, "relation_name")
    micro, per_relation = accuracy_by_group(examples, relations, embedder, desc=config.name)
    excluded = set(config.exclude_relations)
    kept = [accuracy for relation, (accuracy, _) in per_relation.items() if relation not in excluded]
    if not kept:
        raise EvaluationDataError(f"{data_dir / config.annotation_file}: every relation is excluded")
    dropped = [relation for relation in per_relation if relation in excluded]
    metrics = [
        MetricValue("macro_accuracy", macro_average(kept), "accuracy", "Macro accuracy over relations"),
        MetricValue("accuracy", micro, "accuracy", "Accuracy (all examples)"),
    ]
    return config.make_result(
        metrics,
        {"total": len(examples), "relations": len(per_relation), "relations_in_macro": len(kept)},
        excluded={
            "symmetric_relations": len(dropped),
            "examples_of_symmetric_relations": sum(per_relation[r][1] for r in dropped),
        },
        data_version=files_version([data_dir / config.annotation_file]),
    )


def evaluate_vg_attribution(config: VGAttributionConfig, embedder: Embedder) -> BenchmarkResult:
    data_dir = Path(config.data_dir)
    examples, pairs = read_visual_genome(data_dir, config.annotation_file, config.image_dir, "attributes")
    micro, per_pair = accuracy_by_group(examples, pairs, embedder, desc=config.name)
    kept = [accuracy for accuracy, count in per_pair.values() if count >= config.min_count]
    if not kept:
        raise EvaluationDataError(
            f"{data_dir / config.annotation_file}: no attribute pair has {config.min_count} or more examples"
        )
    small = [count for _, count in per_pair.values() if count < config.min_count]
    metrics = [
        MetricValue("macro_accuracy", macro_average(kept), "accuracy", "Macro accuracy over attribute pairs"),
        MetricValue("accuracy", micro, "accuracy", "Accuracy (all examples)"),
    ]
    return config.make_result(
        metrics,
        {"total": len(examples), "attribute_pairs": len(per_pair), "attribute_pairs_in_macro": len(kept)},
        excluded={
            f"attribute_pairs_under_{config.min_count}_examples": len(small),
            "examples_of_those_pairs": sum(small),
        },
        data_version=files_version([data_dir / config.annotation_file]),
    )


# --- Order perturbations ---------------------------------------------------------------------------------------

NOUN_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS"})
ADJECTIVE_TAGS = frozenset({"JJ", "JJR", "JJS"})


def _permute_positions(tokens: list[str], positions: list[int], rng: np.random.Generator) -> None:
    """Shuffle the tokens at `positions` among themselves, in place."""
    values = [tokens[p] for p in positions]
    for position, source in zip(positions, rng.permutation(len(positions))):
        tokens[position] = values[source]


def shuffle_nouns_and_adjectives(tokens: list[str], tags: list[str], rng: np.random.Generator) -> str:
    """Nouns trade places with nouns, adjectives with adjectives; everything else stays."""
    shuffled = list(tokens)
    _permute_positions(shuffled, [i for i, tag in enumerate(tags) if tag in NOUN_TAGS], rng)
    _permute_positions(shuffled, [i for i, tag in enumerate(tags) if tag in ADJECTIVE_TAGS], rng)
    return " ".join(shuffled)


def shuffle_all_but_nouns_and_adjectives(tokens: list[str], tags: list[str], rng: np.random.Generator) -> str:
    """Every token that is neither a noun nor an adjective is shuffled among the others of its kind."""
    shuffled = list(tokens)
    keep = NOUN_TAGS | ADJECTIVE_TAGS
    _permute_positions(shuffled, [i for i, tag in enumerate(tags) if tag not in keep], rng)
    return " ".join(shuffled)


def _trigrams(tokens: list[str]) -> list[list[str]]:
    return [tokens[start : start + 3] for start in range(0, len(tokens), 3)]


def shuffle_within_trigrams(tokens: list[str], tags: list[str], rng: np.random.Generator) -> str:
    """Consecutive trigrams keep their place; the words inside each are shuffled."""
    return " ".join(" ".join(gram[i] for i in rng.permutation(len(gram))) for gram in _trigrams(tokens))


def shuffle_trigrams(tokens: list[str], tags: list[str], rng: np.random.Generator) -> str:
    """Consecutive trigrams are shuffled as blocks."""
    grams = _trigrams(tokens)
    return " ".join(" ".join(grams[i]) for i in rng.permutation(len(grams)))


ORDER_PERTURBATIONS: tuple[Callable[[list[str], list[str], np.random.Generator], str], ...] = (
    shuffle_nouns_and_adjectives,
    shuffle_all_but_nouns_and_adjectives,
    shuffle_within_trigrams,
    shuffle_trigrams,
)


def pre_caption(caption: str, max_words: int = 30) -> str:
    """ARO's (from BLIP) caption normalisation: lower case, `.!"()*#:;~` to spaces, single spaces, truncation."""
    caption = re.sub(r"([.!\"()*#:;~])", " ", caption.lower())
    caption = re.sub(r"\s{2,}", " ", caption).rstrip("\n").strip(" ")
    words = caption.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else caption


@cache
def load_tagger(name: str | None = None):
    """A spaCy pipeline reduced to tokenizer and tagger (tags are all the order perturbations need); loaded once
    per process, as tagging keeps no state between texts."""
    import spacy

    from ..concepts import resolve_spacy_model

    return spacy.load(resolve_spacy_model(name), exclude=["parser", "ner", "lemmatizer", "senter"])


def order_options(captions: list[str], seed: int, max_words: int, nlp) -> list[list[str]]:
    """Per caption, `[true caption, four perturbations]`, all through `pre_caption`.

    The perturbations of caption `i` depend only on `(seed, i)` and the caption, not on the other captions.
    """
    options = []
    for index, doc in enumerate(nlp.pipe(captions, batch_size=256)):
        tokens, tags = [t.text for t in doc], [t.tag_ for t in doc]
        rng = np.random.default_rng([seed, index])
        perturbed = [perturb(tokens, tags, rng) for perturb in ORDER_PERTURBATIONS]
        options.append([pre_caption(text, max_words) for text in (captions[index], *perturbed)])
    return options


def evaluate_order(config: OrderConfig, embedder: Embedder) -> BenchmarkResult:
    from ..concepts import spacy_model_fingerprint

    items = read_captioned_images(config.annotation_file, config.image_root, config.split)
    pairs = [(item.image, caption) for item in items for caption in item.captions]
    options = order_options(
        [caption for _, caption in pairs], config.seed, config.max_words, load_tagger(config.spacy_model)
    )
    examples = [PreferenceExample(image, [texts[0]], texts[1:]) for (image, _), texts in zip(pairs, options)]
    accuracy = score_preferences({"order": examples}, embedder, desc=config.name, positive_wins_ties=True)["order"]
    version = files_version([config.annotation_file])
    version.update(spacy=spacy_model_fingerprint(config.spacy_model), seed=str(config.seed))
    metric = MetricValue("accuracy", accuracy, "accuracy", "Precision@1 of the true caption among 5 orderings")
    return config.make_result([metric], {"total": len(examples), "images": len(items)}, data_version=version)
