"""Training data (`modeling_concept_clip.data`): brace patterns of shards, shard concepts joined by `__key__`, bad data
files named with the fix, and the extract -> train chain on relative image paths."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeling_concept_clip.collator import ConceptCollator
from modeling_concept_clip.commands import extract_concepts as cli
from modeling_concept_clip.concepts import resolve_spacy_model
from modeling_concept_clip.concepts.readers import InputFileError
from modeling_concept_clip.data import load_image_text_dataset, resolve_columns
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor
from tests.shard_fixtures import gold_captions, png_bytes, write_samples, write_tar_shards


@pytest.fixture(scope="module")
def processor():
    return build_tiny_model_and_processor("clip")[1]


def collate_all(dataset, processor, image_root=None, batch_size=4):
    """Every row through the collator: `(images collated, skipped rows by reason, rows seen)`."""
    image_column, caption_column = resolve_columns(dataset, None, None)
    collator = ConceptCollator(processor, image_column, caption_column, "concepts", image_root=image_root)
    rows = list(dataset)
    images, skipped = 0, {}
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        images += 0 if "pixel_values" not in batch else batch["pixel_values"].shape[0]
        for row in batch["skipped"]:
            skipped.setdefault(row.reason, []).append(row.detail)
    return images, skipped, len(rows)


def write_concepts_file(path: Path, concepts: dict[str, list[str]]) -> None:
    table = pa.table({"__key__": list(concepts), "concepts": pa.array(list(concepts.values()), pa.list_(pa.string()))})
    pq.write_table(table, path)


def test_brace_pattern_loads_the_shards_and_names_a_missing_one(tmp_path):
    write_tar_shards(tmp_path, num_shards=3, per_shard=4)
    dataset, image_root = load_image_text_dataset(data_file=str(tmp_path / "{00000..00002}.tar"))
    assert len(dataset) == 12 and image_root is None
    with pytest.raises(FileNotFoundError, match="1 file.*00003.tar"):
        load_image_text_dataset(data_file=str(tmp_path / "{00000..00003}.tar"))


@pytest.mark.parametrize("keep", [512 * 7 + 100, 0])
def test_truncated_shard_is_named_before_training(tmp_path, keep):
    """`datasets` reads a truncated tar quietly up to where it stops: its later samples would be lost unseen."""
    write_tar_shards(tmp_path, num_shards=2, per_shard=4)
    shard = tmp_path / "00001.tar"
    shard.write_bytes(shard.read_bytes()[:keep])  # cut inside the second sample's image, or empty
    for streaming in (False, True):
        with pytest.raises(InputFileError, match=r"00001\.tar is truncated"):
            load_image_text_dataset(data_file=str(tmp_path / "*.tar"), streaming=streaming)


@pytest.mark.parametrize("streaming", [False, True])
def test_shard_concepts_are_joined_by_key_and_a_missing_key_reaches_the_collator(tmp_path, processor, streaming):
    written = write_tar_shards(tmp_path / "shards", num_shards=3, per_shard=4)
    concepts_dir = tmp_path / "concepts"
    concepts_dir.mkdir()
    expected = {}
    for shard, samples in written.items():
        keys = list(samples)
        # Hand-written concepts (not spaCy's): each key's own; the second shard lacks its last key.
        concepts = {key: [f"thing {key}", f"colour {key[-1]}"] for key in keys}
        if shard.endswith("00001.tar"):
            del concepts[keys[-1]]
        write_concepts_file(concepts_dir / f"{Path(shard).stem}.parquet", concepts)
        expected.update({key: concepts.get(key) for key in keys})
    dataset, _ = load_image_text_dataset(
        data_file=str(tmp_path / "shards" / "{00000..00002}.tar"), streaming=streaming, concepts_dir=str(concepts_dir)
    )
    assert "concepts" in dataset.column_names
    rows = list(dataset)
    assert len(rows) == 12  # no row dropped
    assert {row["__key__"]: row["concepts"] for row in rows} == expected
    images, skipped, seen = collate_all(dataset, processor)
    assert seen == 12 and images == 11
    assert list(skipped) == ["concepts"] and len(skipped["concepts"]) == 1


def test_repeated_keys_are_named_by_shard_and_key(tmp_path):
    """Concepts are joined by key: a key held twice, by a concepts file or by a shard's samples, is refused before
    training (it gave both samples the concepts of the second)."""
    shard = tmp_path / "shards" / "00000.tar"
    write_samples(shard, [("a", "a red couch"), ("b", "a cat"), ("a", "a blue lamp")])
    concepts = tmp_path / "concepts" / "00000.parquet"
    concepts.parent.mkdir()
    table = pa.table({"__key__": ["a", "b", "a"], "concepts": [["a red couch"], ["a cat"], ["a blue lamp"]]})
    pq.write_table(table, concepts)
    for streaming in (False, True):
        with pytest.raises(InputFileError, match=rf"{concepts} \(the concepts of {shard}\): rows 0 and 2 .* key 'a'"):
            load_image_text_dataset(data_file=str(shard), concepts_dir=str(concepts.parent), streaming=streaming)
    write_concepts_file(concepts, {"a": ["a red couch"], "b": ["a cat"]})
    with pytest.raises(InputFileError, match=rf"{shard}: samples 0 and 2 have the same key 'a'"):
        load_image_text_dataset(data_file=str(shard), concepts_dir=str(concepts.parent))


def test_missing_concepts_file_names_the_shard(tmp_path):
    written = write_tar_shards(tmp_path / "shards", num_shards=3, per_shard=2)
    (tmp_path / "concepts").mkdir()
    for shard, samples in list(written.items())[:2]:
        write_concepts_file(tmp_path / "concepts" / f"{Path(shard).stem}.parquet", {k: ["x"] for k in samples})
    with pytest.raises(FileNotFoundError, match=r"1 of 3 shards have no concepts file .*00002\.tar"):
        load_image_text_dataset(data_file=str(tmp_path / "shards" / "*.tar"), concepts_dir=str(tmp_path / "concepts"))
    with pytest.raises(ValueError, match="WebDataset"):
        (tmp_path / "a.jsonl").write_text('{"caption": "x", "image": "a.png"}\n')
        load_image_text_dataset(data_file=str(tmp_path / "a.jsonl"), concepts_dir=str(tmp_path / "concepts"))


@pytest.mark.parametrize("streaming", [False, True])
def test_bad_data_files_are_named_with_the_line_and_the_fix(tmp_path, streaming):
    def load(name, content: bytes):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputFileError) as error:
            load_image_text_dataset(data_file=str(path), streaming=streaming)
        return str(error.value)

    good = b'{"image": "a.png", "caption": "a table"}\n'
    message = load("latin.jsonl", good + '{"image": "b.png", "caption": "a café"}\n'.encode("latin-1"))
    assert "latin.jsonl, line 2: not valid utf-8 (byte 0xe9)" in message and "iconv" in message
    message = load("latin.csv", "image,caption\na.png,a table\nb.png,a café\n".encode("latin-1"))
    assert "latin.csv, line 3: not valid utf-8" in message
    message = load("broken.jsonl", good + good + b'{"image": "c.png", "caption": \n')
    assert "broken.jsonl, line 3: not a JSON object" in message and "--skip_invalid_lines" in message
    message = load("list.jsonl", good + b"[1, 2]\n")
    assert "list.jsonl, line 2: not a JSON object" in message
    assert "empty.jsonl is empty" in load("empty.jsonl", b"")
    assert "blank.jsonl is empty" in load("blank.jsonl", b"\n  \n")
    assert "empty.csv is empty" in load("empty.csv", b"")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_extract_then_train_on_relative_image_paths(tmp_path, processor, fmt, monkeypatch):
    try:
        resolve_spacy_model()
    except OSError as error:  # pragma: no cover - the Makefile installs the pinned model
        pytest.skip(f"no spaCy English pipeline: {error}")
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    rows = []
    for i, caption in enumerate(gold_captions(6)):
        (data / "images" / f"{i}.png").write_bytes(png_bytes(i))
        rows.append({"image": f"images/{i}.png", "caption": caption})
    if fmt == "jsonl":
        (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), data / "captions.parquet")
    # As the README runs it: from the folder above, relative input and output.
    monkeypatch.chdir(tmp_path)
    assert cli.main(["--input", f"data/captions.{fmt}", "--output_dir", "concepts1", "--n_process", "1",
                     "--disable_progress_bar"]) == 0  # fmt: skip
    dataset, image_root = load_image_text_dataset(data_file=f"concepts1/part-00000.{fmt}")
    images, skipped, seen = collate_all(dataset, processor, image_root=image_root)
    assert skipped == {} and images == seen == 6
    assert dataset[0]["image"] == "../data/images/0.png"  # relative to the output file, so the folders can move
