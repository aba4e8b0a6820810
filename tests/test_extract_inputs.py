"""`concept-clip-extract` on inputs a user gets wrong: a wrong caption column, non-UTF-8 bytes, lines that are not
JSON, an empty file, and invalid extraction flags (the flags are `ConceptExtractorConfig`'s fields)."""

import json
from pathlib import Path

import pytest

from modeling_concept_clip.commands import extract_concepts as cli
from modeling_concept_clip.concepts import resolve_spacy_model

try:
    resolve_spacy_model()
except OSError as error:  # pragma: no cover - the Makefile installs the pinned model
    pytest.skip(f"no spaCy English pipeline: {error}", allow_module_level=True)


def run_cli(*args):
    return cli.main([*map(str, args), "--n_process", "1", "--disable_progress_bar"])


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_wrong_caption_column_fails_naming_the_columns(tmp_path, capsys, fmt):
    if fmt == "jsonl":
        path = write(tmp_path / "c.jsonl", '{"image": "a.png", "caption": "a dog"}\n{"image": "b.png"}\n')
    else:
        path = write(tmp_path / "c.csv", "image,caption\na.png,a dog\n")
    assert run_cli("--input", path, "--output_dir", tmp_path / "out", "--caption_column", "text") == 1
    error = capsys.readouterr().err
    assert f"No row of {path} has the caption column 'text' (columns: image, caption)" in error
    assert not list((tmp_path / "out").glob("part-*"))


def test_non_utf8_csv_fails_naming_the_line_and_reads_with_its_encoding(tmp_path, capsys):
    path = write(
        tmp_path / "c.csv", "image,caption\na.png,a wooden table\nb.png,a café with red chairs\n".encode("latin-1")
    )
    out = tmp_path / "out"
    assert run_cli("--input", path, "--output_dir", out) == 1
    error = capsys.readouterr().err
    assert f"{path}, line 3: not valid utf-8 (byte 0xe9)" in error and "--encoding latin-1" in error
    assert run_cli("--input", path, "--output_dir", out, "--encoding", "latin-1") == 0
    text = (out / "part-00000.jsonl").read_text(encoding="utf-8")
    assert "\ufffd" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[1]["caption"] == "a café with red chairs" and "a café" in rows[1]["concepts"]


def test_lines_that_are_not_json_fail_unless_skipped(tmp_path, capsys):
    path = write(tmp_path / "c.jsonl", '{"caption": "a dog"}\n{not json\n{"caption": "a cat"}\n[1]\n')
    out = tmp_path / "out"
    assert run_cli("--input", path, "--output_dir", out) == 1
    assert f"{path}: 2 line(s) are not JSON objects (line 2, 4)" in capsys.readouterr().err
    assert run_cli("--input", path, "--output_dir", out, "--skip_invalid_lines") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 2 and summary["invalid_json_lines"] == 2


def test_empty_file_fails(tmp_path, capsys):
    assert run_cli("--input", write(tmp_path / "c.jsonl", "\n"), "--output_dir", tmp_path / "out") == 1
    assert "has no rows" in capsys.readouterr().err


def test_extraction_flags_are_the_config_fields(tmp_path, capsys):
    path = write(tmp_path / "c.jsonl", '{"caption": "a dog in the background next to a cat and a bird"}\n')
    assert run_cli("--input", path, "--output_dir", tmp_path / "a") == 0
    assert run_cli("--input", path, "--output_dir", tmp_path / "b", "--generic_nouns", "--max_concepts", "none") == 0
    assert run_cli("--input", path, "--output_dir", tmp_path / "c", "--max_concepts", "2") == 0

    def concepts(name):
        return json.loads((tmp_path / name / "part-00000.jsonl").read_text())["concepts"]

    assert concepts("a") == ["a dog", "a cat", "a bird"]
    assert concepts("b") == ["a dog", "the background", "a cat", "a bird"]
    assert concepts("c") == ["a dog", "a cat"]
    run = json.loads((tmp_path / "b" / "_run.json").read_text())
    assert run["extractor.max_concepts"] is None and run["extractor.generic_nouns"] == []
    capsys.readouterr()
    for bad in (["--max_concepts", "0"], ["--mode", "llm"], ["--max_caption_chars", "0"], ["--num_shards", "0"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["--input", str(path), "--output_dir", str(tmp_path / "d"), *bad])
        assert exit_info.value.code == 2
        assert bad[0].lstrip("-") in capsys.readouterr().err
