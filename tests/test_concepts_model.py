"""Concept extraction with the real spaCy pipeline: gold-set accuracy, pipeline setup, workers, `datasets`
caching and the ``concept-clip-extract`` command."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from modeling_concept_clip.commands import extract_concepts as cli
from modeling_concept_clip.concepts import (
    ConceptColumnFunction,
    ConceptExtractor,
    ConceptExtractorConfig,
    add_concepts_column,
    load_spacy_pipeline,
    resolve_spacy_model,
    score_concepts,
    spacy_model_fingerprint,
)

GOLD = Path(__file__).parent / "data" / "concepts_gold.jsonl"
REPO = Path(__file__).resolve().parent.parent

try:
    resolve_spacy_model()
except OSError as error:  # pragma: no cover - the Makefile installs the pinned model
    pytest.skip(f"no spaCy English pipeline: {error}", allow_module_level=True)


@pytest.fixture(scope="session")
def gold():
    rows = [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["caption"] for row in rows], [row["concepts"] for row in rows]


@pytest.fixture(scope="session")
def extractor():
    with ConceptExtractor(ConceptExtractorConfig(n_process=1)) as ext:
        yield ext


@pytest.fixture(scope="session")
def pos_extractor():
    with ConceptExtractor(ConceptExtractorConfig(n_process=1, mode="pos")) as ext:
        yield ext


def test_gold_set_is_large_and_well_formed(gold):
    captions, concepts = gold
    assert len(captions) >= 150
    assert len(set(captions)) == len(captions)
    assert all(isinstance(c, list) and c and all(isinstance(x, str) and x for x in c) for c in concepts)


@pytest.mark.parametrize("mode", ["parser", "pos"])
def test_gold_precision_and_recall(mode, gold, extractor, pos_extractor):
    captions, expected = gold
    ext = extractor if mode == "parser" else pos_extractor
    scores = score_concepts(ext.extract(captions), expected)
    print(f"\n{mode}: precision {scores['precision']:.3f} recall {scores['recall']:.3f} on {len(captions)} captions")
    assert scores["precision"] >= 0.90
    assert scores["recall"] >= 0.90


def test_known_captions(extractor):
    assert extractor.extract(
        [
            "a red couch next to a blue lamp",
            "Stock photo of a happy family on the beach",
            "a group of people standing in front of a building",
            "it is sitting on the table",
            "So cute!!",
        ]
    ) == [
        ["a red couch", "a blue lamp"],
        ["a happy family", "the beach"],
        ["a group of people", "a building"],
        ["the table"],
        ["So cute!!"],
    ]


def test_pipeline_excludes_unneeded_components(extractor):
    assert extractor.nlp.pipe_names == ["tok2vec", "tagger", "parser"]
    assert extractor._pos_mapper is not None  # replaces attribute_ruler
    nlp, mapper = load_spacy_pipeline(ConceptExtractorConfig(fast_pos=False))
    assert nlp.pipe_names == ["tok2vec", "tagger", "parser", "attribute_ruler"]
    assert mapper is None


def test_fast_pos_equals_the_attribute_ruler_on_gold_captions(gold, extractor):
    nlp, _ = load_spacy_pipeline(ConceptExtractorConfig(fast_pos=False))
    captions = gold[0]
    fast = [[t.pos_ for t in extractor._pos_mapper(doc)] for doc in extractor.nlp.pipe(captions)]
    reference = [[t.pos_ for t in doc] for doc in nlp.pipe(captions)]
    assert fast == reference


def test_workers_return_the_same_concepts(gold, extractor):
    captions = gold[0][:60]
    config = ConceptExtractorConfig(n_process=2, min_captions_per_process=10)
    with ConceptExtractor(config) as parallel:
        assert parallel.extract(captions) == extractor.extract(captions)
        assert parallel._pool is not None
    assert parallel._pool is None


# --- datasets ----------------------------------------------------------------------------------------------------


@pytest.fixture
def saved_dataset(tmp_path, gold):
    from datasets import Dataset, load_from_disk

    captions = gold[0][:40] + [None, "", gold[0][0]]
    Dataset.from_dict({"caption": captions, "id": list(range(len(captions)))}).save_to_disk(tmp_path / "ds")
    return load_from_disk(str(tmp_path / "ds"))


def test_add_concepts_column_is_cached_on_the_second_call(saved_dataset, extractor, monkeypatch):
    calls = []
    original = ConceptExtractor._extract_clean

    def counting(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(ConceptExtractor, "_extract_clean", counting)
    config = ConceptExtractorConfig(n_process=1)
    first = add_concepts_column(saved_dataset, config, batch_size=16)
    assert sum(calls) > 0
    assert first["concepts"][:40] == extractor.extract(saved_dataset["caption"][:40])
    assert first["concepts"][40:42] == [[], []]  # missing / empty caption
    calls.clear()
    second = add_concepts_column(saved_dataset, config, batch_size=16)
    assert calls == []  # loaded from the cache file: nothing extracted
    assert second._fingerprint == first._fingerprint
    assert second["concepts"] == first["concepts"]
    other = add_concepts_column(saved_dataset, ConceptExtractorConfig(n_process=1, max_concepts=1), batch_size=16)
    assert other._fingerprint != first._fingerprint
    assert sum(calls) > 0


def test_add_concepts_column_rejects_unknown_column(saved_dataset):
    with pytest.raises(ValueError, match="text"):
        add_concepts_column(saved_dataset, caption_column="text")


@pytest.mark.slow
def test_add_concepts_column_with_num_proc(saved_dataset, extractor):
    result = add_concepts_column(saved_dataset, ConceptExtractorConfig(), num_proc=2, batch_size=8)
    assert result["concepts"][:40] == extractor.extract(saved_dataset["caption"][:40])


@pytest.mark.slow
def test_map_function_fingerprint_is_the_same_in_another_process():
    from datasets.fingerprint import Hasher

    def function():
        return ConceptColumnFunction(
            config=ConceptExtractorConfig(),
            caption_column="caption",
            output_column="concepts",
            model_fingerprint=spacy_model_fingerprint(),
        )

    code = (
        "from datasets.fingerprint import Hasher;"
        "from modeling_concept_clip.concepts import *;"
        "print(Hasher.hash(ConceptColumnFunction(config=ConceptExtractorConfig(), caption_column='caption',"
        " output_column='concepts', model_fingerprint=spacy_model_fingerprint())))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == Hasher.hash(function())


# --- the command --------------------------------------------------------------------------------------------------


def run_cli(*args):
    return cli.main([*map(str, args), "--n_process", "1", "--disable_progress_bar"])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def messy_jsonl(tmp_path):
    lines = [
        json.dumps({"caption": "a red couch next to a blue lamp", "id": 1}),
        json.dumps({"caption": None, "id": 2}),
        json.dumps({"id": 3}),
        json.dumps({"caption": 42, "id": 4}),
        "",
        "{not json",
        json.dumps({"caption": "   ", "id": 5}),
        json.dumps({"caption": "a dog " * 100, "id": 6}),
        json.dumps({"caption": "Stock photo of a happy family on the beach", "id": 7}),
        json.dumps([1, 2]),
        json.dumps({"caption": "So cute!!", "id": 8, "extra": {"nested": [1]}}),
    ]
    path = tmp_path / "captions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_cli_jsonl_with_bad_rows(messy_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    assert (
        run_cli(
            "--input",
            messy_jsonl,
            "--skip_invalid_lines",
            "--output_dir",
            out,
            "--chunk_size",
            4,
            "--max_caption_chars",
            300,
        )
        == 0
    )
    rows = [row for part in sorted(out.glob("part-*.jsonl")) for row in read_jsonl(part)]
    assert [row.get("id") for row in rows] == [1, 2, 3, 4, 5, 6, 7, 8]
    by_id = {row["id"]: row["concepts"] for row in rows}
    assert by_id[1] == ["a red couch", "a blue lamp"]
    assert by_id[2] == by_id[3] == by_id[4] == by_id[5] == by_id[6] == []
    assert by_id[7] == ["a happy family", "the beach"]
    assert by_id[8] == ["So cute!!"]
    assert rows[-1]["extra"] == {"nested": [1]}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows"] == 8
    assert summary["invalid_rows"] == {"missing": 2, "not_a_string": 1, "empty": 1, "too_long": 1}
    assert summary["invalid_json_lines"] == 2
    assert summary["fallback_captions"] == 1
    assert summary["chunks"] == {"total": 3, "processed_now": 3, "skipped_finished": 0}
    stats = [json.loads(p.read_text()) for p in sorted(out.glob("part-*.stats.json"))]
    assert [line for s in stats for line in s["invalid_json_lines"]] == [6, 10]
    assert json.loads(capsys.readouterr().out)["rows"] == 8


def test_cli_resumes_and_skips_finished_chunks(messy_jsonl, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run_cli("--input", messy_jsonl, "--skip_invalid_lines", "--output_dir", out, "--chunk_size", 4) == 0
    before = {p.name: p.read_bytes() for p in out.glob("part-*.jsonl")}
    # A run killed while writing chunk 1: its stats marker is gone and a temporary file is left over.
    (out / "part-00001.stats.json").unlink()
    (out / ".part-00001.jsonl.tmp-999").write_text("half a chunk")
    processed = []
    original = cli._process_chunk
    monkeypatch.setattr(cli, "_process_chunk", lambda chunk, *a: processed.append(chunk.index) or original(chunk, *a))
    assert run_cli("--input", messy_jsonl, "--skip_invalid_lines", "--output_dir", out, "--chunk_size", 4) == 0
    assert processed == [1]
    assert {p.name: p.read_bytes() for p in out.glob("part-*.jsonl")} == before
    assert sorted(p.name for p in out.glob("part-*.stats.json")) == [f"part-0000{i}.stats.json" for i in range(3)]
    assert not list(out.glob(".part-*"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["chunks"] == {"total": 3, "processed_now": 1, "skipped_finished": 2}
    assert summary["rows"] == 8


def test_cli_refuses_other_settings_unless_overwrite(messy_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_cli("--input", messy_jsonl, "--skip_invalid_lines", "--output_dir", out, "--chunk_size", 4) == 0
    assert run_cli("--input", messy_jsonl, "--skip_invalid_lines", "--output_dir", out, "--chunk_size", 5) == 1
    assert "other settings (chunk_size)" in capsys.readouterr().err
    assert (
        run_cli("--input", messy_jsonl, "--skip_invalid_lines", "--output_dir", out, "--chunk_size", 5, "--overwrite")
        == 0
    )
    # 10 non-blank lines in chunks of 5; the 3 chunks of the earlier run are gone.
    assert sorted(p.name for p in out.glob("part-*.jsonl")) == ["part-00000.jsonl", "part-00001.jsonl"]
    assert json.loads((out / "summary.json").read_text())["chunks"]["total"] == 2


def test_cli_csv(tmp_path):
    path = tmp_path / "captions.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["url", "caption"])
        writer.writerow(["a.jpg", "two small brown dogs playing in the grass"])
        writer.writerow(["b.jpg", ""])
        writer.writerow(["c.jpg", 'a "quoted", multi\nline caption about a cat'])
        writer.writerow(["d.jpg", "a cat " * 40_000])  # over the csv module's default field limit
    out = tmp_path / "out"
    assert run_cli("--input", path, "--output_dir", out) == 0
    rows = read_jsonl(out / "part-00000.jsonl")
    assert [row["url"] for row in rows] == ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert rows[0]["concepts"] == ["two small brown dogs", "the grass"]
    assert rows[1]["concepts"] == []
    assert "a cat" in rows[2]["concepts"]
    assert rows[3]["concepts"] == []
    assert json.loads((out / "summary.json").read_text())["invalid_rows"]["too_long"] == 1


def test_cli_parquet_keeps_schema(tmp_path):
    table = pa.table(
        {"key": pa.array([10, 11, 12], pa.int64()), "caption": ["a black cat on a white pillow", None, "it is red"]}
    )
    path = tmp_path / "captions.parquet"
    pq.write_table(table, path)
    out = tmp_path / "out"
    assert run_cli("--input", path, "--output_dir", out, "--chunk_size", 2) == 0
    result = pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])
    assert result.schema.field("key").type == pa.int64()
    assert result.schema.field("concepts").type == pa.list_(pa.string())
    assert result.column("concepts").to_pylist() == [["a black cat", "a white pillow"], [], ["it is red"]]


def test_cli_saved_dataset_dict_needs_split(tmp_path, capsys):
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"caption": ["a horse grazing in a green pasture"]})}).save_to_disk(
        tmp_path / "dd"
    )
    out = tmp_path / "out"
    assert run_cli("--input", tmp_path / "dd", "--output_dir", out) == 1
    assert "--split" in capsys.readouterr().err
    assert run_cli("--input", tmp_path / "dd", "--output_dir", out, "--split", "train") == 0
    assert pq.read_table(out / "part-00000.parquet").column("concepts").to_pylist() == [["a horse", "a green pasture"]]


def test_cli_missing_input(tmp_path, capsys):
    assert run_cli("--input", tmp_path / "nope.jsonl", "--output_dir", tmp_path / "out") == 1
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_module(messy_jsonl, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "modeling_concept_clip.commands.extract_concepts"]
    command += [
        "--input",
        str(messy_jsonl),
        "--skip_invalid_lines",
        "--output_dir",
        str(out),
        "--disable_progress_bar",
    ]
    result = subprocess.run(
        command, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["rows"] == 8


UNGUARDED_SCRIPT = """\
import json, sys
from modeling_concept_clip.concepts import ConceptExtractor, ConceptExtractorConfig

print("module level ran", flush=True)
captions = [json.loads(line)["caption"] for line in open(sys.argv[1], encoding="utf-8")][:60]
config = ConceptExtractorConfig(n_process=2, min_captions_per_process=10)
extractor = ConceptExtractor(config)
print(json.dumps(extractor.extract(captions)), flush=True)
print(json.dumps(extractor._pool is not None))
"""


@pytest.mark.slow
def test_a_script_without_a_main_guard_uses_the_workers(tmp_path, gold, extractor):
    # Worker processes start with `spawn`, which imports the parent's __main__ in every worker: an unguarded
    # script would start the extraction again in each of them (BrokenProcessPool). The workers must not run it.
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED_SCRIPT, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script), str(GOLD)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "module level ran" and lines.count("module level ran") == 1
    assert json.loads(lines[1]) == extractor.extract(gold[0][:60])
    assert json.loads(lines[2]) is True  # the pool did the work
