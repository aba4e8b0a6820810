"""The closed-vocabulary CLIP tokenizer: one token per listed word, EOS with the highest id, CLIP file format."""

import pytest
from transformers import AutoTokenizer

from modeling_concept_clip.testing_utils import TINY_WORDS
from modeling_concept_clip.tokenization import build_word_level_clip_tokenizer

# Words whose letters overlap: hand-written merge chains split "triangle" into "tri an g l e".
WORDS = list(TINY_WORDS) + "an triangle tri angle orange range heart hear ear art diamond dotted stripy".split()


def test_every_word_is_one_token_and_eos_is_the_highest_id(tmp_path):
    tokenizer = build_word_level_clip_tokenizer(WORDS, model_max_length=16)
    for word in WORDS:
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    assert tokenizer.eos_token_id == len(tokenizer) - 1 == max(tokenizer.get_vocab().values())
    assert tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.eos_token_id != 2
    ids = tokenizer("a big red triangle", padding="max_length", max_length=8).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[5:] == [tokenizer.eos_token_id] * 3
    # Unseen words spell out; other characters are unknown, never EOS.
    assert tokenizer.tokenize("zqx 7") == ["z", "q", "x</w>", "7</w>"]
    assert tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a-b")).count(tokenizer.eos_token_id) == 0
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("a big red triangle").input_ids == tokenizer("a big red triangle").input_ids


def test_the_same_words_always_give_the_same_tokenizer():
    first, second = (build_word_level_clip_tokenizer(reversed(WORDS[::-1])) for _ in range(2))
    assert first.get_vocab() == second.get_vocab()
    assert first("a big red triangle").input_ids == second("a big red triangle").input_ids


def test_rejects_words_outside_the_alphabet():
    with pytest.raises(ValueError, match="a-z and 0-9"):
        build_word_level_clip_tokenizer(["red", "Blue"])
