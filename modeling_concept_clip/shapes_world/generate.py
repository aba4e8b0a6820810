"""Write a shapes world to disk: a training imagefolder, held-out probes, zero-shot tasks and a retrieval set.

    python -m modeling_concept_clip.shapes_world --output_dir data/shapes_world --num_train 20000

Layout (SugarCrepe-style `filename`s are relative to `images/`; Karpathy-style records give `filepath` "images" and
`filename`, relative to the folder of `retrieval.json`):

    <output_dir>/world.json                 generator version, seed, settings and counts of every part
    <output_dir>/train/                     imagefolder: metadata.jsonl + images/*.png (+ world.json)
    <output_dir>/test/                      held-out scenes: images/*.png, metadata.jsonl, swap_att.json,
                                            replace_att.json, replace_obj.json, add_obj.json, retrieval.json,
                                            binding/<attribute>_<attribute>.json (filenames relative to images/)
    <output_dir>/zeroshot/                  zeroshot.json, one imagefolder per task (<task>/<class>/*.png) and
                                            its prompt templates (<task>_templates.json)
    <output_dir>/unseen/                    like test/, on scenes with a (colour, shape) pair held out of training
    <output_dir>/validation/                like test/, plus zeroshot/ like the zero-shot part: for choosing recipes
                                            and settings (never choose on test/ or unseen/); no scene or image of
                                            it is in another part
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .captions import CaptionSpec, bow_caption, sample_caption_spec
from .probes import BINDING_PAIRS, PROBE_KINDS, binding_probe_name, make_binding_probe, make_probe
from .scenes import Scene, render_scene, sample_scene, scene_rng, unseen_combinations
from .vocabulary import WorldConfig

logger = logging.getLogger(__name__)

# Bump when a change of the code changes the generated data: a folder of another version is not reused.
# 2: bag-of-words captions shuffle every caption word; 3: grid placement, binding probes per attribute pair,
# bag-of-words captions name a random subset of the attribute types.
GENERATOR_VERSION = "3"
GENERATOR_NAME = "modeling_concept_clip.shapes_world"
# Independent random streams: a scene of one part is drawn independently of the scenes of another part (the
# validation part also rejects every scene that another part has).
TRAIN_STREAM, TEST_STREAM, ZEROSHOT_STREAM, UNSEEN_STREAM = 0, 1, 2, 3
VALIDATION_STREAM, VALIDATION_ZEROSHOT_STREAM = 4, 5
# Single-object classification tasks: the attribute that is the label, and prompt templates in the world vocabulary
# (no punctuation: the world tokenizer has no token for it). Attribute prompts use "the" to avoid "a orange".
ZEROSHOT_TEMPLATES: dict[str, tuple[str, ...]] = {
    "shape": ("a photo of a {}", "a drawing of a {}", "there is a {}", "a {} is shown"),
    "color": ("a photo of the {} shape", "a drawing of the {} shape", "the {} shape", "the shape is {}"),
    "pattern": ("a photo of the {} shape", "a drawing of the {} shape", "the {} shape", "the shape is {}"),
    "size": ("a photo of the {} shape", "a drawing of the {} shape", "the {} shape", "the shape is {}"),
}
PART_NAMES = ("train", "test", "zeroshot", "unseen", "validation")
HELD_OUT_STREAMS = {"test": TEST_STREAM, "unseen": UNSEEN_STREAM, "validation": VALIDATION_STREAM}
MAX_REDRAWS = 1000  # validation scenes drawn again because another part has them
BINDING_DIR = "binding"  # the attribute-pair binding probes of a held-out part
ZEROSHOT_OBJECTS_FILE = "objects.jsonl"  # the scene of every zero-shot image, next to the task folders
WORLD_FILE = "world.json"


@dataclass
class GenerateArguments:
    """Where to write the world, how many of each item, and the seed (the world itself is a `WorldConfig`)."""

    output_dir: str = field(default="data/shapes_world", metadata={"help": "Folder to write the world into."})
    seed: int = field(default=0, metadata={"help": "Seed of every random stream (train, test, zero-shot, unseen)."})
    num_train: int = field(default=20000, metadata={"help": "Training scenes (one image and one caption each)."})
    num_test: int = field(default=1000, metadata={"help": "Held-out scenes for the probes and for retrieval."})
    captions_per_test_image: int = field(default=5, metadata={"help": "Retrieval captions per held-out image."})
    zeroshot_per_class: int = field(default=50, metadata={"help": "Single-object images per zero-shot class."})
    num_unseen: int = field(
        default=500, metadata={"help": "Held-out scenes with an unseen (colour, shape) pair (0: no unseen/ folder)."}
    )
    num_validation: int = field(
        default=500,
        metadata={"help": "Validation scenes (probes, binding probes, retrieval), plus `zeroshot_per_class` single "
                  "objects per zero-shot class under validation/zeroshot/, for choosing settings (0: no "
                  "validation/ folder)."},
    )  # fmt: skip
    overwrite: bool = field(default=False, metadata={"help": "Replace parts written with other settings."})


# ----------------------------------------------------------------------------------------------------------------
# Items: one image and its records each, a pure function of (seed, stream, index). One process draws ~1,500 training
# scenes/s, so no worker pool: starting workers (each re-imports the package, torch included) would cost more.


@dataclass
class _Context:
    world: WorldConfig
    seed: int
    part_dir: Path
    unseen: frozenset[tuple[str, str]]
    captions_per_image: int = 1
    taken: frozenset = frozenset()  # `Scene.drawing_key()`s of other parts, drawn again (the validation part)


def _save(image, path: Path) -> None:
    image.save(path, format="PNG", optimize=False)


def _file_name(index: int, width: int = 6) -> str:
    return f"{index:0{width}d}.png"


def _train_item(ctx: _Context, index: int) -> dict:
    rng = scene_rng(ctx.seed, TRAIN_STREAM, index)
    scene = sample_scene(rng, ctx.world, forbidden=ctx.unseen)
    spec = sample_caption_spec(rng, scene, ctx.world.background_mention_prob)
    file_name = f"images/{_file_name(index)}"
    _save(render_scene(scene, ctx.world), ctx.part_dir / file_name)
    return {
        "file_name": file_name,
        "caption": spec.render(scene),
        "bow_caption": bow_caption(rng, scene, spec, ctx.world.bow_mention_prob, ctx.world.bow_mention_per_object),
        "scene": json.dumps(scene.to_dict()),
        "num_objects": len(scene.objects),
        "template": spec.template,
    }


def _distinct_specs(rng: np.random.Generator, scene: Scene, world: WorldConfig, count: int) -> list[CaptionSpec]:
    """`count` captions of different text where the scene allows it (different template or object order)."""
    specs: list[CaptionSpec] = []
    texts: set[str] = set()
    for _ in range(50 * count):
        spec = sample_caption_spec(rng, scene, world.background_mention_prob)
        if spec.render(scene) not in texts:
            specs.append(spec)
            texts.add(spec.render(scene))
            if len(specs) == count:
                break
    return specs


def _new_scene(ctx: _Context, rng: np.random.Generator, what: str, **kwargs) -> Scene:
    """`sample_scene(rng, ctx.world, **kwargs)`, drawn again (from the same generator, so deterministically) while
    another part has the same scene (`ctx.taken`)."""
    for _ in range(MAX_REDRAWS):
        scene = sample_scene(rng, ctx.world, **kwargs)
        if scene.drawing_key() not in ctx.taken:
            return scene
    raise RuntimeError(f"{what}: every scene drawn is in another part of the world; this world is too small.")


def _held_out_scene(ctx: _Context, rng: np.random.Generator, stream: int, index: int) -> Scene:
    """The scene of a held-out item: with exactly one object of a held-out (colour, shape) pair, the first, in
    `unseen/`; without any elsewhere."""
    if stream == UNSEEN_STREAM:
        pairs = sorted(ctx.unseen)
        color, shape = pairs[int(rng.integers(len(pairs)))]
        first = {"color": color, "shape": shape}
        return _new_scene(ctx, rng, f"scene {index}", forbidden=ctx.unseen, first=first)
    return _new_scene(ctx, rng, f"scene {index}", forbidden=ctx.unseen)


def _held_out_item(ctx: _Context, index: int, stream: int) -> dict:
    """A held-out scene with its retrieval captions and one probe of every kind (where the scene admits one)."""
    rng = scene_rng(ctx.seed, stream, index)
    scene = _held_out_scene(ctx, rng, stream, index)
    # In unseen/, the probes must change the object with the held-out pair.
    focus, forbidden = ({0}, frozenset()) if stream == UNSEEN_STREAM else (None, ctx.unseen)
    specs = _distinct_specs(rng, scene, ctx.world, ctx.captions_per_image)
    probes = {kind: make_probe(kind, rng, scene, specs[0], ctx.world, forbidden, focus) for kind in PROBE_KINDS}
    for pair in BINDING_PAIRS:
        probes[binding_probe_name(pair)] = make_binding_probe(pair, rng, scene, ctx.world, forbidden, focus)
    file_name = _file_name(index)
    _save(render_scene(scene, ctx.world), ctx.part_dir / "images" / file_name)
    return {
        "file_name": file_name,
        "captions": [spec.render(scene) for spec in specs],
        "scene": scene.to_dict(),
        "probes": {kind: asdict(probe) if probe else None for kind, probe in probes.items()},
    }


def _zeroshot_scene(ctx: _Context, task_index: int, class_index: int, index: int, stream: int) -> Scene:
    """A single object with attribute `task` = class `class_index` (the zero-shot image `index` of the class)."""
    task = list(ZEROSHOT_TEMPLATES)[task_index]
    label = ctx.world.values(task)[class_index]
    rng = np.random.default_rng([ctx.seed, stream, task_index, class_index, index])
    return _new_scene(ctx, rng, f"{task}/{label} {index}", num_objects=1, forbidden=ctx.unseen, first={task: label})


def _zeroshot_item(ctx: _Context, task_index: int, class_index: int, index: int, stream: int) -> dict:
    task = list(ZEROSHOT_TEMPLATES)[task_index]
    label = ctx.world.values(task)[class_index]
    scene = _zeroshot_scene(ctx, task_index, class_index, index, stream)
    file_name = f"{task}/{label}/{_file_name(index, 5)}"
    _save(render_scene(scene, ctx.world), ctx.part_dir / file_name)
    return {"file_name": file_name, "task": task, "label": label, "scene": json.dumps(scene.to_dict())}


# ----------------------------------------------------------------------------------------------------------------
# Parts.


def _progress(items: Sequence, description: str):
    """A progress bar over `items` (tqdm, on stderr; off where tqdm is missing)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with transformers and datasets
        return items
    return tqdm(items, desc=description, unit="scene", mininterval=1.0)


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            file.write(json.dumps(row) + "\n")


def _write_json(path: Path, data) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=1)
        file.write("\n")


def _write_train(part_dir: Path, world: WorldConfig, args: GenerateArguments) -> dict:
    (part_dir / "images").mkdir(parents=True)
    ctx = _Context(world, args.seed, part_dir, unseen_combinations(world, args.seed))
    rows = [_train_item(ctx, index) for index in _progress(range(args.num_train), f"{part_dir.name} scenes")]
    _write_jsonl(part_dir / "metadata.jsonl", rows)
    return {"scenes": len(rows)}


def _write_held_out(
    part_dir: Path, world: WorldConfig, args: GenerateArguments, part: str, taken: frozenset = frozenset()
) -> dict:
    """The probe files of `test/`, `unseen/` or `validation/`: SugarCrepe-style JSON per kind, Karpathy-style
    retrieval JSON, and an imagefolder `metadata.jsonl` of the same images. `taken`: scenes to draw again."""
    (part_dir / "images").mkdir(parents=True)
    count = {"test": args.num_test, "unseen": args.num_unseen, "validation": args.num_validation}[part]
    stream = HELD_OUT_STREAMS[part]
    unseen = unseen_combinations(world, args.seed)
    ctx = _Context(world, args.seed, part_dir, unseen, args.captions_per_test_image, taken)
    items = [_held_out_item(ctx, index, stream) for index in _progress(range(count), f"{part_dir.name} scenes")]
    counts = {"scenes": len(items)}
    (part_dir / BINDING_DIR).mkdir()
    for kind in (*PROBE_KINDS, *map(binding_probe_name, BINDING_PAIRS)):
        probes = {}
        for index, item in enumerate(items):
            probe = item["probes"][kind]
            if probe is not None:
                probes[str(index)] = {
                    "filename": item["file_name"],
                    "caption": probe["caption"],
                    "negative_caption": probe["negative_caption"],
                    **probe["change"],
                }
        _write_json(part_dir / (f"{kind}.json" if kind in PROBE_KINDS else f"{BINDING_DIR}/{kind}.json"), probes)
        counts[kind] = len(probes)
    images, sentence_id = [], 0
    for index, item in enumerate(items):
        sentences = []
        for caption in item["captions"]:
            sentences.append({"raw": caption, "tokens": caption.split(), "imgid": index, "sentid": sentence_id})
            sentence_id += 1
        images.append(
            {
                "filepath": "images",  # Karpathy style: the image is <folder of this file>/<filepath>/<filename>
                "filename": item["file_name"],
                "split": "test",
                "imgid": index,
                "sentids": [sentence["sentid"] for sentence in sentences],
                "sentences": sentences,
            }
        )
    _write_json(part_dir / "retrieval.json", {"dataset": "shapes_world", "images": images})
    counts["retrieval_captions"] = sentence_id
    _write_jsonl(
        part_dir / "metadata.jsonl",
        (
            {
                "file_name": f"images/{item['file_name']}",
                "caption": item["captions"][0],
                "captions": item["captions"],
                "scene": json.dumps(item["scene"]),
            }
            for item in items
        ),
    )
    return counts


def _write_zeroshot(
    part_dir: Path,
    world: WorldConfig,
    args: GenerateArguments,
    stream: int = ZEROSHOT_STREAM,
    taken: frozenset = frozenset(),
) -> dict:
    tasks = list(ZEROSHOT_TEMPLATES)
    ctx = _Context(world, args.seed, part_dir, unseen_combinations(world, args.seed), taken=taken)
    rows = []
    for task_index, task in enumerate(tasks):
        for class_index, label in enumerate(world.values(task)):
            (part_dir / task / label).mkdir(parents=True)
            for index in range(args.zeroshot_per_class):
                rows.append(_zeroshot_item(ctx, task_index, class_index, index, stream))
    # Every attribute of each image's object (the folders name only the task's), e.g. for linear probes.
    _write_jsonl(part_dir / ZEROSHOT_OBJECTS_FILE, rows)
    description = {
        "tasks": [
            {
                "name": task,
                "data_dir": task,
                # Sorted like the ClassLabel that `load_dataset("imagefolder")` infers from the folder names.
                "classnames": sorted(world.values(task)),
                "templates": list(ZEROSHOT_TEMPLATES[task]),
                "num_images": args.zeroshot_per_class * len(world.values(task)),
            }
            for task in tasks
        ]
    }
    _write_json(part_dir / "zeroshot.json", description)
    for task in tasks:  # the templates alone, as the evaluation suite's `templates=<file>.json` reads them
        _write_json(part_dir / f"{task}_templates.json", list(ZEROSHOT_TEMPLATES[task]))
    return {task["name"]: task["num_images"] for task in description["tasks"]}


def _other_parts_scenes(world: WorldConfig, args: GenerateArguments) -> frozenset:
    """`Scene.drawing_key()` of every scene of train/, test/, unseen/ and zeroshot/, drawn again from their seeds
    (each item's scene is the first thing its generator draws), without rendering: what validation/ must avoid."""
    unseen = unseen_combinations(world, args.seed)
    ctx = _Context(world, args.seed, Path("."), unseen)
    keys = {
        sample_scene(scene_rng(args.seed, TRAIN_STREAM, index), world, forbidden=unseen).drawing_key()
        for index in range(args.num_train)
    }
    for part, count in (("test", args.num_test), ("unseen", args.num_unseen if unseen else 0)):
        stream = HELD_OUT_STREAMS[part]
        for index in range(count):
            keys.add(_held_out_scene(ctx, scene_rng(args.seed, stream, index), stream, index).drawing_key())
    for task_index, task in enumerate(ZEROSHOT_TEMPLATES):
        for class_index in range(len(world.values(task))):
            for index in range(args.zeroshot_per_class):
                keys.add(_zeroshot_scene(ctx, task_index, class_index, index, ZEROSHOT_STREAM).drawing_key())
    return frozenset(keys)


def _write_validation(part_dir: Path, world: WorldConfig, args: GenerateArguments) -> dict:
    """Like test/, plus zeroshot/ like the zero-shot part, from their own streams, without any scene of another part."""
    taken = _other_parts_scenes(world, args)
    counts = _write_held_out(part_dir, world, args, "validation", taken)
    zeroshot = _write_zeroshot(part_dir / "zeroshot", world, args, VALIDATION_ZEROSHOT_STREAM, taken)
    return {**counts, "zeroshot": zeroshot}


def _requested(part: str, args: GenerateArguments) -> dict:
    """The arguments a part depends on (a rerun with the same ones finds the part already there)."""
    if part == "train":
        return {"num_train": args.num_train}
    if part == "test":
        return {"num_test": args.num_test, "captions_per_test_image": args.captions_per_test_image}
    if part == "zeroshot":
        return {"zeroshot_per_class": args.zeroshot_per_class}
    if part == "validation":  # it avoids the scenes of every other part
        return {
            "num_validation": args.num_validation,
            **{key: value for other in ("train", "test", "zeroshot", "unseen") for key, value in _requested(other, args).items()},
        }  # fmt: skip
    return {"num_unseen": args.num_unseen, "captions_per_test_image": args.captions_per_test_image}


def _fingerprint(part: str, world: WorldConfig, args: GenerateArguments) -> dict:
    return {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "part": part,
        "seed": args.seed,
        "world": asdict(world),
        "requested": _requested(part, args),
    }


def read_world_info(folder: str | Path) -> dict | None:
    """The `world.json` of a generated folder, or None if there is none (not generated, or interrupted)."""
    path = Path(folder) / WORLD_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def _matches(info: dict | None, fingerprint: dict) -> bool:
    return info is not None and all(info.get(key) == value for key, value in fingerprint.items())


def _file_index(parts: Iterable[str]) -> dict:
    """Where each input of the training script and of the evaluation suite lies, relative to the output folder."""
    index: dict = {}
    if "train" in parts:
        index["train"] = {"imagefolder": "train", "metadata": "train/metadata.jsonl"}
    for part in ("test", "unseen", "validation"):
        if part in parts:
            index[part] = {
                "images": f"{part}/images",
                "imagefolder": part,
                "retrieval": f"{part}/retrieval.json",
                **{kind: f"{part}/{kind}.json" for kind in PROBE_KINDS},
                "binding": {
                    name: f"{part}/{BINDING_DIR}/{name}.json" for name in map(binding_probe_name, BINDING_PAIRS)
                },
            }
    if "zeroshot" in parts:
        index["zeroshot"] = {
            task: {"image_folder": f"zeroshot/{task}", "templates": f"zeroshot/{task}_templates.json"}
            for task in ZEROSHOT_TEMPLATES
        }
        index["zeroshot"]["tasks"] = "zeroshot/zeroshot.json"
    if "validation" in parts:
        index["validation"]["zeroshot"] = {
            task: {
                "image_folder": f"validation/zeroshot/{task}",
                "templates": f"validation/zeroshot/{task}_templates.json",
            }
            for task in ZEROSHOT_TEMPLATES
        }
        index["validation"]["zeroshot"]["tasks"] = "validation/zeroshot/zeroshot.json"
    return index


def generate_world(args: GenerateArguments, world: WorldConfig | None = None) -> dict:
    """Write every part of the world under `args.output_dir` and return the root `world.json` content.

    A part whose `world.json` matches the settings is kept as it is (a rerun is cheap); a part written with other
    settings, or left without `world.json` by an interrupted run, is replaced if `args.overwrite`, else an error is
    raised. `world.json` is written last, so its presence means the part is complete.
    """
    world = world or WorldConfig()
    root = Path(args.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    unseen = unseen_combinations(world, args.seed)
    writers = {
        "train": lambda d: _write_train(d, world, args),
        "test": lambda d: _write_held_out(d, world, args, "test"),
        "zeroshot": lambda d: _write_zeroshot(d, world, args),
        "unseen": lambda d: _write_held_out(d, world, args, "unseen"),
        "validation": lambda d: _write_validation(d, world, args),
    }
    parts = {}
    for part in PART_NAMES:
        part_dir = root / part
        if (part == "unseen" and (not unseen or args.num_unseen == 0)) or (
            part == "validation" and args.num_validation == 0
        ):
            if part_dir.exists():
                logger.warning("%s is left from another run: this world has no %s part.", part_dir, part)
            continue
        fingerprint = _fingerprint(part, world, args)
        info = read_world_info(part_dir)
        if _matches(info, fingerprint):
            logger.info("%s: already generated with these settings, kept.", part_dir)
            parts[part] = info["counts"]
            continue
        if part_dir.exists():
            if not args.overwrite:
                reason = "other settings" if info else "no world.json (interrupted run or foreign folder)"
                raise FileExistsError(
                    f"{part_dir} exists with {reason}; pass overwrite=True (--overwrite) to replace it."
                )
            shutil.rmtree(part_dir)
        start = time.perf_counter()
        counts = writers[part](part_dir)
        seconds = time.perf_counter() - start
        logger.info("%s: wrote %s in %.1f s.", part_dir, counts, seconds)
        info = {**fingerprint, "unseen_combinations": sorted(map(list, unseen)), "counts": counts}
        info["seconds"] = round(seconds, 2)
        _write_json(part_dir / WORLD_FILE, info)
        parts[part] = counts
    root_info = {
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": args.seed,
        "world": asdict(world),
        "requested": {part: _requested(part, args) for part in parts},
        "unseen_combinations": sorted(map(list, unseen)),
        "counts": parts,
        "files": _file_index(parts),
    }
    _write_json(root / WORLD_FILE, root_info)
    return root_info


def main(argv: list[str] | None = None) -> int:
    """Command line: `python -m modeling_concept_clip.shapes_world --output_dir DIR [--num_train N] ...`."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser((GenerateArguments, WorldConfig), description=__doc__.split("\n\n")[0])
    args, world = parser.parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    info = generate_world(args, world)
    print(json.dumps({"output_dir": args.output_dir, "counts": info["counts"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
