"""The closed-vocabulary CLIP tokenizer: one token per listed word, EOS with the highest id, CLIP file format."""

import random
from collections import Counter

import pytest
from transformers import AutoTokenizer

from modeling_concept_clip.testing_utils import TINY_WORDS
from modeling_concept_clip.tokenization import (
    _learn_merges,
    build_word_level_clip_tokenizer,
    clip_words,
    count_words,
)

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
    for word in ("Café", "two words", "m²", ""):  # not one lowercase word as CLIP splits text
        with pytest.raises(ValueError, match="one word as CLIP's tokenizer splits text"):
            build_word_level_clip_tokenizer(["red", word], byte_fallback=True)


# Accented, CJK and other non-ASCII text; the third caption's words are not in the vocabulary (spelt out).
UNICODE_CAPTIONS = ["Un café crème à côté d'une tarte", "一只红色的猫在桌子上", "Ñandú über die Straße 😀, 2 Äpfel"]


def test_byte_fallback_keeps_every_character(tmp_path):
    tokenizer = build_word_level_clip_tokenizer(count_words(UNICODE_CAPTIONS[:2]), byte_fallback=True)
    for caption in UNICODE_CAPTIONS:
        ids = tokenizer(caption).input_ids
        assert tokenizer.unk_token_id not in ids, caption
        # CLIP's decoding gives the normalised words (lowercase) separated by spaces.
        assert tokenizer.decode(ids, skip_special_tokens=True) == " ".join(clip_words(caption)), caption
    assert len(tokenizer.tokenize("café")) == len(tokenizer.tokenize("一只红色的猫在桌子上")) == 1
    assert len(tokenizer.tokenize("straße")) == 7  # s t r a, two bytes of ß, e
    assert tokenizer.eos_token_id == len(tokenizer) - 1 == max(tokenizer.get_vocab().values())
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(UNICODE_CAPTIONS).input_ids == tokenizer(UNICODE_CAPTIONS).input_ids
    # Without the fallback (the demo world's closed vocabulary) the same characters are unknown.
    closed = build_word_level_clip_tokenizer(["un", "tarte"])
    assert closed.unk_token_id in closed(UNICODE_CAPTIONS[0]).input_ids


def naive_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair encoding training as written in the textbook: recount every pair of every word at each step."""
    corpus = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges = []
    while True:
        counts = Counter(pair for symbols in corpus for pair in zip(symbols, symbols[1:]))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for index, symbols in enumerate(corpus):
            merged, i = [], 0
            while i < len(symbols):
                if symbols[i : i + 2] == list(best):
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            corpus[index] = merged


def test_merges_equal_the_textbook_algorithm():
    rng = random.Random(0)
    random_words = {"".join(rng.choices("abcde", k=rng.randint(1, 8))) for _ in range(150)}  # many shared pairs
    for words in (WORDS, sorted(random_words), ["aaaa", "aaa", "aa", "a", "abab", "baba"]):
        words = list(dict.fromkeys(words))
        assert _learn_merges(words) == naive_merges(words)


def test_count_words_splits_like_clip():
    counts = count_words(["A red-haired café owner, 2 dogs", "two RED dogs", "一只猫 m² Cafe\u0301"])
    assert counts == Counter(
        {"red": 2, "dogs": 2, "café": 2, "a": 1, "haired": 1, "owner": 1, "two": 1, "一只猫": 1, "m": 1}
    )  # "Cafe" + a combining accent is "café" in NFC, as CLIP's tokenizer normalises it
