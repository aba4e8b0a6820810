"""`concept-clip-init`: a small CLIP/SigLIP for your own captions, which the training script trains offline."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModel, AutoProcessor

from modeling_concept_clip.commands.init_model import main as init_main

from .test_train import assert_plain_checkpoint, read_log, run_training
from .train_fixtures import make_rows, write_dataset

UNICODE_CAPTION = "Un café rouge, 2 chiens et un 猫"
SWAPPED = [
    "a red circle on the left and a blue square on the right",
    "a blue circle on the left and a red square on the right",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = make_rows(16)
    rows[0]["caption"] = UNICODE_CAPTION  # words of any script are tokens; digits and punctuation are bytes
    return write_dataset(tmp_path_factory.mktemp("data"), "jsonl", rows)


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_init_writes_a_folder_that_trains_two_steps(model_type, data, tmp_path, capsys):
    folder = tmp_path / "init"
    argv = ["--output_dir", str(folder), "--model_type", model_type, "--train_file", data["train_file"]]
    assert init_main([*argv, "--image_size", "32", "--patch_size", "8", "--width", "32", "--layers", "2"]) == 0
    printed = capsys.readouterr().out
    assert f"--model_name_or_path {folder} --train_file {data['train_file']}" in printed

    processor = AutoProcessor.from_pretrained(folder)
    tokenizer = processor.tokenizer
    captions = [json.loads(line)["caption"] for line in open(data["train_file"])]
    for word in {w for caption in captions[1:] for w in caption.split()} | {"this", "is", "photo", "of"}:
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    assert tokenizer.eos_token_id == max(tokenizer.get_vocab().values()) == tokenizer.pad_token_id
    # No character of the captions is unknown: an accented or CJK caption decodes back to its words.
    ids = tokenizer(UNICODE_CAPTION).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "un café rouge , 2 chiens et un 猫"
    assert len(tokenizer.tokenize("café")) == len(tokenizer.tokenize("猫")) == 1
    assert type(processor.image_processor).__name__.endswith("ImageProcessorPil")
    model = AutoModel.from_pretrained(folder).eval()
    assert model.config.vision_config.image_size == 32 and model.config.text_config.num_hidden_layers == 2
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id

    # Swapped words give different text embeddings, pooled at the EOS position (not a bag of words by construction).
    padding = "max_length" if model_type == "siglip" else True
    inputs = processor(text=SWAPPED, padding=padding, return_tensors="pt")
    with torch.no_grad():
        features = model.get_text_features(**inputs).pooler_output
        hidden = model.text_model(**inputs).last_hidden_state
    assert not torch.allclose(features[0], features[1], atol=1e-4)
    if model_type == "clip":
        eos = (inputs.input_ids == tokenizer.eos_token_id).int().argmax(-1)
        pooled = model.text_projection(hidden[torch.arange(2), eos])
        torch.testing.assert_close(features, pooled)

    # Both ways the training script takes the folder: its weights, or its config and processor (from scratch).
    for how in (
        ["--model_name_or_path", str(folder)],
        ["--config_name", str(folder), "--processor_name", str(folder)],
    ):
        out = tmp_path / f"out-{how[0].strip('-')}"
        flags = ["--output_dir", str(out), "--per_device_train_batch_size", "4", "--max_train_steps", "2"]
        flags += ["--logging_steps", "1", "--learning_rate", "1e-3", "--report_to", "none", "--train_file"]
        result = run_training([*how, *flags, data["train_file"]])
        assert result["completed_steps"] == 2 and [entry["step"] for entry in read_log(out)] == [1, 2]
        if how[0] == "--model_name_or_path":
            assert_plain_checkpoint(out, model_type)
        # The folder's weights are a random initialisation: the card does not call the run a fine-tune of it.
        card = (out / "README.md").read_text()
        assert "trained with C2LIP from a random initialisation" in card, card[:1500]
        assert "a C2LIP fine-tune" not in card and "Fine-tuned from" not in card


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--patch_size", "7"], "does not divide --image_size"),
        (["--heads", "3"], "does not divide --width"),
        (["--model_type", "siglip", "--max_length", "32"], "at least 64"),
        (["--train_dir", "x"], "exactly one data source"),
        (["--layers", "0"], "--layers must be positive"),
    ],
)
def test_bad_flags_fail_at_parse_time(flags, message, data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        init_main(["--output_dir", str(tmp_path / "x"), "--train_file", data["train_file"], *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_wrong_caption_column_and_non_empty_folder_are_errors(data, tmp_path, caplog):
    argv = ["--output_dir", str(tmp_path), "--train_file", data["train_file"]]
    (tmp_path / "keep.txt").write_text("mine")
    assert init_main(argv) == 1 and "is not empty" in caplog.text
    assert init_main([*argv, "--overwrite_output_dir", "--caption_column", "title"]) == 1
    assert "The caption column 'title' is not in the dataset" in caplog.text
