"""`concept-clip-extract` over WebDataset tar shards and img2dataset parquet shards: one concepts file per shard keyed
by `__key__`, resume after kill -9, the `--num_shards` partition over separate jobs, and missing or corrupt shards
reported by name."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest

from modeling_concept_clip.commands import extract_concepts as cli
from modeling_concept_clip.concepts import ConceptExtractor, ConceptExtractorConfig, resolve_spacy_model
from modeling_concept_clip.concepts.shards import expand_pattern, partition
from tests.shard_fixtures import gold_captions, write_parquet_shard, write_samples, write_tar_shards

REPO = Path(__file__).resolve().parent.parent

try:
    resolve_spacy_model()
except OSError as error:  # pragma: no cover - the Makefile installs the pinned model
    pytest.skip(f"no spaCy English pipeline: {error}", allow_module_level=True)


@pytest.fixture(scope="module")
def extractor():
    with ConceptExtractor(ConceptExtractorConfig(n_process=1)) as ext:
        yield ext


def run_cli(*args):
    return cli.main([*map(str, args), "--n_process", "1", "--disable_progress_bar"])


def read_concepts(folder: Path) -> dict[str, dict[str, list[str]]]:
    """`{file name: {__key__: concepts}}` of every concepts file in `folder`."""
    out = {}
    for path in sorted(folder.glob("*.parquet")):
        table = pq.read_table(path)
        assert table.column_names == ["__key__", "concepts"]
        out[path.name] = dict(zip(table.column("__key__").to_pylist(), table.column("concepts").to_pylist()))
    return out


def test_partition_is_datasets_shard():
    rows = datasets.Dataset.from_dict({"i": list(range(11))})
    for num_shards in (1, 3, 4, 11):
        blocks = [partition(11, num_shards, index) for index in range(num_shards)]
        assert [list(block) for block in blocks] == [rows.shard(num_shards, i)["i"] for i in range(num_shards)]
    # More jobs than items (datasets refuses those): the last jobs get nothing.
    assert [len(partition(11, 13, index)) for index in range(13)] == [1] * 11 + [0, 0]
    with pytest.raises(ValueError, match="shard_index"):
        partition(5, 2, 2)


def test_expand_pattern_braces_then_globs(tmp_path):
    for name in ("a-1.tar", "a-2.tar", "b-1.tar"):
        (tmp_path / name).touch()
    assert expand_pattern(str(tmp_path / "a-{1..3}.tar")) == [str(tmp_path / f"a-{i}.tar") for i in (1, 2, 3)]
    assert expand_pattern(str(tmp_path / "{b,a}-*.tar")) == [
        str(tmp_path / n) for n in ("b-1.tar", "a-1.tar", "a-2.tar")
    ]


def test_one_concepts_file_per_shard_keyed_like_datasets(tmp_path, extractor, capsys):
    written = write_tar_shards(tmp_path / "shards", num_shards=3, per_shard=8)
    out = tmp_path / "concepts"
    assert run_cli("--input", tmp_path / "shards" / "{00000..00002}.tar", "--output_dir", out) == 0
    found = read_concepts(out)
    assert sorted(found) == ["00000.parquet", "00001.parquet", "00002.parquet"]
    # The reference: the keys `datasets`' webdataset builder gives the same shards, and in-process extraction.
    reference = datasets.load_dataset("webdataset", data_files={"train": sorted(written)}, split="train")
    for shard, samples in written.items():
        rows = [
            row
            for row in reference.select_columns(["__key__", "__url__", "txt"])
            if row["__url__"] == str(Path(shard).resolve())
        ]
        keys = [row["__key__"] for row in rows]
        assert list(found[Path(shard).stem + ".parquet"]) == keys == list(samples)
        assert list(found[Path(shard).stem + ".parquet"].values()) == extractor.extract([row["txt"] for row in rows])
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 24 and summary["shards"] == {"total": 3, "processed_now": 3, "skipped_finished": 0}
    assert summary["failed"] == summary["missing"] == {}
    stats = json.loads((out / "00001.stats.json").read_text())
    assert stats["rows"] == 8 and stats["shard"].endswith("00001.tar")


def test_caption_from_a_json_member(tmp_path, extractor):
    written = write_tar_shards(tmp_path / "shards", num_shards=1, per_shard=5)
    out = tmp_path / "concepts"
    assert run_cli("--input", tmp_path / "shards" / "*.tar", "--output_dir", out, "--caption_column", "json",
                   "--caption_key", "caption") == 0  # fmt: skip
    captions = [caption.upper() for caption in next(iter(written.values())).values()]
    assert list(read_concepts(out)["00000.parquet"].values()) == extractor.extract(captions)


def test_wrong_caption_member_fails_at_once_naming_the_members(tmp_path, capsys):
    write_tar_shards(tmp_path / "shards", num_shards=2, per_shard=3)
    out = tmp_path / "concepts"
    assert run_cli("--input", tmp_path / "shards" / "*.tar", "--output_dir", out, "--caption_column", "text") == 1
    error = capsys.readouterr().err
    assert "caption column 'text'" in error and "png, txt, json" in error
    assert not list(out.glob("*.parquet"))


def test_img2dataset_parquet_shards_skip_failed_downloads(tmp_path, extractor):
    captions = gold_captions(6)
    write_parquet_shard(tmp_path / "shards" / "00000.parquet", 0, captions, failed={1, 4})
    out = tmp_path / "concepts"
    assert run_cli("--input", tmp_path / "shards" / "*.parquet", "--output_dir", out) == 0
    found = read_concepts(out)["00000.parquet"]
    kept = [0, 2, 3, 5]
    assert list(found) == [f"0000000{i:02d}" for i in kept]
    assert list(found.values()) == extractor.extract([captions[i] for i in kept])
    assert json.loads((out / "summary.json").read_text())["not_downloaded"] == 2


def test_missing_and_corrupt_shards_are_named_and_the_others_finish(tmp_path, capsys):
    shards = tmp_path / "shards"
    write_tar_shards(shards, num_shards=4, per_shard=4)
    (shards / "00002.tar").unlink()
    data = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(data[: len(data) // 2 + 100])  # truncated mid-member
    out = tmp_path / "concepts"
    pattern = shards / "{00000..00003}.tar"
    assert run_cli("--input", pattern, "--output_dir", out) == 1
    error = capsys.readouterr().err
    assert "00001.tar" in error and "00002.tar: FileNotFoundError" in error
    assert sorted(read_concepts(out)) == ["00000.parquet", "00003.parquet"]
    assert run_cli("--input", pattern, "--output_dir", out, "--merge") == 1
    captured = capsys.readouterr()
    assert sorted(json.loads(captured.out)["missing"]) == [str(shards / "00001.tar"), str(shards / "00002.tar")]
    assert "ReadError" in captured.err or "EOFError" in captured.err
    # Repaired shards: the rerun extracts only those two, then the merge passes.
    write_tar_shards(shards, num_shards=4, per_shard=4)
    assert run_cli("--input", pattern, "--output_dir", out) == 0
    assert json.loads(capsys.readouterr().out)["shards"]["processed_now"] == 2
    assert not list(out.glob("*.error.json"))
    assert run_cli("--input", pattern, "--output_dir", out, "--merge") == 0


@pytest.mark.parametrize("kind", ["shards", "rows"])
def test_three_jobs_give_the_union_of_one_job(tmp_path, kind):
    if kind == "shards":
        write_tar_shards(tmp_path / "in", num_shards=7, per_shard=3)
        flags = ["--input", tmp_path / "in" / "{00000..00006}.tar"]
        files = "*.parquet"
    else:
        lines = [json.dumps({"caption": caption, "id": i}) for i, caption in enumerate(gold_captions(20))]
        (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        flags = ["--input", tmp_path / "in.jsonl", "--chunk_size", 3]
        files = "part-*.jsonl"
    assert run_cli(*flags, "--output_dir", tmp_path / "one") == 0
    for index in range(3):
        assert run_cli(*flags, "--output_dir", tmp_path / "three", "--num_shards", 3, "--shard_index", index) == 0
        if index < 2:  # until the last job ran, the merge names what is missing
            assert run_cli(*flags, "--output_dir", tmp_path / "three", "--merge") == 1
    assert run_cli(*flags, "--output_dir", tmp_path / "three", "--merge") == 0
    one = {p.name: p.read_bytes() for p in (tmp_path / "one").glob(files)}
    three = {p.name: p.read_bytes() for p in (tmp_path / "three").glob(files)}
    assert len(one) == 7 and one == three


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_gives_identical_output(tmp_path):
    write_tar_shards(tmp_path / "in", num_shards=30, per_shard=6)
    command = [sys.executable, "-m", "modeling_concept_clip.commands.extract_concepts"]
    command += ["--input", str(tmp_path / "in" / "*.tar"), "--n_process", "1", "--disable_progress_bar"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    process = subprocess.Popen([*command, "--output_dir", str(killed)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 240
    while not list(killed.glob("*.stats.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(list(killed.glob("*.stats.json")))
    assert 1 <= finished < 30, f"the kill came at {finished} of 30 shards"
    subprocess.run([*command, "--output_dir", str(killed)], cwd=REPO, env=env, check=True, capture_output=True)
    whole = tmp_path / "whole"
    subprocess.run([*command, "--output_dir", str(whole)], cwd=REPO, env=env, check=True, capture_output=True)
    assert {p.name: p.read_bytes() for p in killed.glob("*.parquet")} == {
        p.name: p.read_bytes() for p in whole.glob("*.parquet")
    }
    assert len(list(whole.glob("*.parquet"))) == 30
    assert not [p for p in killed.iterdir() if ".tmp-" in p.name]
    assert json.loads((killed / "summary.json").read_text())["shards"]["skipped_finished"] == finished


def test_a_caption_that_is_not_utf8_fails_its_shard_naming_the_sample(tmp_path, capsys):
    write_tar_shards(tmp_path / "shards", num_shards=2, per_shard=3)
    with tarfile.open(tmp_path / "shards" / "00001.tar", "w") as tar:
        for key, text in (("a", b"a red couch"), ("b", "a café table".encode("latin-1"))):
            info = tarfile.TarInfo(f"{key}.txt")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    out = tmp_path / "concepts"
    assert run_cli("--input", tmp_path / "shards" / "*.tar", "--output_dir", out) == 1
    assert "00001.tar, sample 'b': the txt member is not valid UTF-8 (byte 0xe9)" in capsys.readouterr().err
    assert sorted(read_concepts(out)) == ["00000.parquet"]


def test_a_repeated_key_fails_its_shard_naming_the_key(tmp_path, capsys):
    """Training joins concepts to samples by key: two samples with one key would get the same concepts."""
    write_tar_shards(tmp_path / "shards", num_shards=1, per_shard=3)
    write_samples(tmp_path / "shards" / "00001.tar", [("a", "a red couch"), ("b", "a cat"), ("a", "a blue lamp")])
    # Consecutive members of one key are one sample: here with two of each member.
    write_samples(tmp_path / "shards" / "00002.tar", [("c", "a dog"), ("c", "a bird")])
    out = tmp_path / "concepts"
    assert run_cli("--input", tmp_path / "shards" / "*.tar", "--output_dir", out) == 1
    err = capsys.readouterr().err
    assert "00001.tar: samples 0 and 2 have the same key 'a' (1 repeated key in all)" in err
    assert "00002.tar, sample 'c': a second png member (c.png)" in err
    assert sorted(read_concepts(out)) == ["00000.parquet"]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(Path(shard).name for shard in summary["failed"]) == ["00001.tar", "00002.tar"]
    # img2dataset's parquet shards: the same rule for their key column.
    write_parquet_shard(tmp_path / "meta" / "00000.parquet", 0, ["a cat", "a dog"])
    table = pq.read_table(tmp_path / "meta" / "00000.parquet")
    pq.write_table(table.set_column(0, "key", [["k", "k"]]), tmp_path / "meta" / "00000.parquet")
    assert run_cli("--input", tmp_path / "meta" / "*.parquet", "--output_dir", tmp_path / "meta-concepts") == 1
    assert "00000.parquet: rows 0 and 1 have the same key 'k'" in capsys.readouterr().err
