"""WebDataset tar shards and img2dataset-style parquet shards, written by the tests (tiny PNGs, real captions)."""

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

GOLD = Path(__file__).parent / "data" / "concepts_gold.jsonl"


def gold_captions(n: int, offset: int = 0) -> list[str]:
    rows = [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["caption"] for row in rows][offset : offset + n]


def png_bytes(index: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), ((37 * index) % 256, (91 * index) % 256, 120)).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_key(shard: int, index: int) -> str:
    return f"{shard:05d}{index:04d}"  # img2dataset's keys


def write_tar_shard(path: Path, shard: int, captions: list[str]) -> list[str]:
    """One shard: per sample `<key>.png`, `<key>.txt` (the caption) and `<key>.json` (`{"caption": upper case}`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = []
    with tarfile.open(path, "w") as tar:
        for index, caption in enumerate(captions):
            key = sample_key(shard, index)
            members = {
                "png": png_bytes(index),
                "txt": caption.encode("utf-8"),
                "json": json.dumps({"caption": caption.upper(), "key": key}).encode("utf-8"),
            }
            for extension, payload in members.items():
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            keys.append(key)
    return keys


def write_samples(path: Path, samples: list[tuple[str, str]]) -> None:
    """A shard of `(key, caption)` samples, each `<key>.png` and `<key>.txt`, in the given order (keys may repeat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for index, (key, caption) in enumerate(samples):
            for extension, payload in (("png", png_bytes(index)), ("txt", caption.encode("utf-8"))):
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))


def write_tar_shards(folder: Path, num_shards: int, per_shard: int) -> dict[str, dict[str, str]]:
    """`num_shards` shards `folder/0000i.tar` of `per_shard` gold captions each; returns `{shard path: {key: caption}}`."""
    written = {}
    for shard in range(num_shards):
        captions = gold_captions(per_shard, offset=(shard * per_shard) % 150)
        path = folder / f"{shard:05d}.tar"
        written[str(path)] = dict(zip(write_tar_shard(path, shard, captions), captions))
    return written


def write_parquet_shard(path: Path, shard: int, captions: list[str], failed: set[int] = frozenset()) -> None:
    """img2dataset's per-shard metadata: key, caption, status (`failed_to_download` for the indices in `failed`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "key": [sample_key(shard, i) for i in range(len(captions))],
            "caption": captions,
            "status": ["failed_to_download" if i in failed else "success" for i in range(len(captions))],
        }
    )
    pq.write_table(table, path)
