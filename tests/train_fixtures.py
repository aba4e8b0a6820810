"""Tiny image-caption datasets in every format the training script reads, written by the tests."""

import io
import json
import random
import tarfile
from pathlib import Path

import datasets
from PIL import Image

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}
SHAPES = ["circle", "square", "star", "triangle"]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` rows with an image (two coloured halves), a caption and its concepts (written by hand, not spaCy)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        left, right = rng.sample(list(COLOURS), 2)
        shape_left, shape_right = rng.sample(SHAPES, 2)
        image = Image.new("RGB", (32, 32), COLOURS[left])
        image.paste(Image.new("RGB", (16, 32), COLOURS[right]), (16, 0))
        rows.append(
            {
                "key": f"{i:04d}",
                "image": image,
                "caption": f"a {left} {shape_left} on the left and a {right} {shape_right} on the right",
                "concepts": [f"a {left} {shape_left}", f"a {right} {shape_right}"],
            }
        )
    return rows


def _save_images(rows: list[dict], folder: Path, subdir: str = "images") -> list[str]:
    (folder / subdir).mkdir(parents=True, exist_ok=True)
    paths = []
    for row in rows:
        relative = f"{subdir}/{row['key']}.png"
        row["image"].save(folder / relative)
        paths.append(relative)
    return paths


def write_dataset(folder: Path, fmt: str, rows: list[dict], with_concepts: bool = True) -> dict[str, str]:
    """Write `rows` in format `fmt`; returns the training-script arguments that read them."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt in ("jsonl", "csv", "parquet"):
        paths = _save_images(rows, folder)
        table = [
            {"image": path, "caption": row["caption"], **({"concepts": row["concepts"]} if with_concepts else {})}
            for path, row in zip(paths, rows)
        ]
        dataset = datasets.Dataset.from_list(table)
        target = folder / f"train.{fmt}"
        if fmt == "jsonl":
            target.write_text("".join(json.dumps(r) + "\n" for r in table))
        elif fmt == "csv":
            if with_concepts:  # CSV holds the list as JSON text
                dataset = dataset.map(lambda r: {"concepts": json.dumps(r["concepts"])})
            dataset.to_csv(str(target), index=False)
        else:
            dataset.to_parquet(str(target))
        return {"train_file": str(target)}
    if fmt == "imagefolder":
        paths = _save_images(rows, folder, subdir="train")
        with open(folder / "train" / "metadata.jsonl", "w") as handle:
            for path, row in zip(paths, rows):
                record = {"file_name": Path(path).name, "caption": row["caption"]}
                if with_concepts:
                    record["concepts"] = row["concepts"]
                handle.write(json.dumps(record) + "\n")
        return {"train_dir": str(folder / "train")}
    if fmt == "webdataset":
        shards = []
        for shard, start in enumerate(range(0, len(rows), 10)):
            path = folder / f"shard-{shard:05d}.tar"
            with tarfile.open(path, "w") as tar:
                for row in rows[start : start + 10]:
                    buffer = io.BytesIO()
                    row["image"].save(buffer, format="PNG")
                    members = {"png": buffer.getvalue(), "txt": row["caption"].encode()}
                    for extension, payload in members.items():
                        info = tarfile.TarInfo(f"{row['key']}.{extension}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
            shards.append(path)
        return {"train_file": str(folder / "shard-*.tar"), "image_column": "png", "caption_column": "txt"}
    if fmt == "save_to_disk":
        features = datasets.Features(
            {"image": datasets.Image(), "caption": datasets.Value("string")}
            | ({"concepts": datasets.Sequence(datasets.Value("string"))} if with_concepts else {})
        )
        records = [
            {
                "image": row["image"],
                "caption": row["caption"],
                **({"concepts": row["concepts"]} if with_concepts else {}),
            }
            for row in rows
        ]
        datasets.Dataset.from_list(records, features=features).save_to_disk(str(folder / "dataset"))
        return {"dataset_name": str(folder / "dataset")}
    raise ValueError(fmt)


def write_shards(folder: Path, rows: list[dict], sizes: list[int], fmt: str = "parquet") -> dict[str, str]:
    """`rows` (with their concepts) as consecutive data files of `sizes` rows, JSON Lines or parquet, for streaming:
    one file is one shard of the stream. Returns the training-script arguments that read them."""
    assert sum(sizes) == len(rows) and fmt in ("jsonl", "parquet")
    paths = _save_images(rows, folder)
    table = [{"image": path, "caption": row["caption"], "concepts": row["concepts"]} for path, row in zip(paths, rows)]
    start = 0
    for index, size in enumerate(sizes):
        part = table[start : start + size]
        target = folder / f"part-{index:05d}.{fmt}"
        if fmt == "jsonl":
            target.write_text("".join(json.dumps(r) + "\n" for r in part))
        else:
            datasets.Dataset.from_list(part).to_parquet(str(target))
        start += size
    return {"train_file": str(folder / f"part-*.{fmt}")}


def as_flags(arguments: dict) -> list[str]:
    flags = []
    for key, value in arguments.items():
        flags += [f"--{key}", str(value)]
    return flags
