"""A CLIP-format tokenizer for a closed vocabulary: tiny test models, the built-in demo world, and small models
for your own captions (`concept-clip-init`)."""

from __future__ import annotations

import functools
import heapq
import string
from collections import Counter, defaultdict
from collections.abc import Iterable

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
ALPHABET = string.ascii_lowercase + string.digits
# Words of `transformers`' default zero-shot template "This is a photo of {}." (without byte fallback, its "." maps
# to <|unk|>).
PIPELINE_TEMPLATE_WORDS = ("this", "is", "a", "photo", "of")
BYTE_SYMBOLS = bytes_to_unicode()  # byte -> the printable character that stands for it in byte-level BPE


@functools.cache
def _clip_text_rules():
    """CLIP's normalizer (NFC, whitespace, lowercase) and its word split (runs of letters, single digits, runs of
    other characters), taken from transformers' `CLIPTokenizer` so that words are counted exactly as it splits them."""
    backend = CLIPTokenizer().backend_tokenizer
    split = backend.pre_tokenizer[0]  # the regex split; the second step maps each word to byte-level symbols
    return backend.normalizer, split


def clip_words(text: str) -> list[str]:
    """`text` as CLIP's tokenizer splits it into words before byte-pair encoding: normalised (NFC, lowercase), then
    runs of letters, single digits and runs of other characters (`"Un café, 2"` -> `["un", "café", ",", "2"]`)."""
    normalizer, split = _clip_text_rules()
    text = normalizer.normalize_str(text)
    return [text[start:end] for _, (start, end) in split.pre_tokenize_str(text)]


def _byte_level(word: str) -> str:
    """`word` in byte-level symbols: one printable character per UTF-8 byte (`"café"` -> `"cafÃ©"`)."""
    return "".join(BYTE_SYMBOLS[byte] for byte in word.encode("utf-8"))


def _pairs(symbols: list[str]) -> list[tuple[str, str]]:
    return list(zip(symbols, symbols[1:]))


def _merge(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """`symbols` with every occurrence of `pair` merged, left to right."""
    merged, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return merged


def _learn_merges(words: list[str]) -> list[tuple[str, str]]:
    """Byte-pair encoding training on `words` until each is one symbol; ties go to the smallest pair (deterministic).

    Each step merges the most frequent pair of adjacent symbols over all words. Pair counts are updated only in the
    words that held the merged pair, and the next pair comes from a heap whose stale entries are skipped, so 20,000
    words take seconds rather than hours.
    """
    corpus = [[*word[:-1], word[-1] + "</w>"] for word in words]
    counts: Counter[tuple[str, str]] = Counter()
    holders: dict[tuple[str, str], set[int]] = defaultdict(set)  # pair -> the words that contain it
    for index, symbols in enumerate(corpus):
        for pair in _pairs(symbols):
            counts[pair] += 1
            holders[pair].add(index)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)
    merges = []
    while heap:
        negative_count, best = heapq.heappop(heap)
        if counts.get(best, 0) != -negative_count:
            continue  # the pair's count changed after this entry was pushed
        merges.append(best)
        changed = set()
        for index in holders.pop(best):
            old, new = corpus[index], _merge(corpus[index], best)
            corpus[index] = new
            for pair in _pairs(old):
                counts[pair] -= 1
                changed.add(pair)
            for pair in _pairs(new):
                counts[pair] += 1
                holders[pair].add(index)
                changed.add(pair)
        for pair in changed:
            if counts[pair] > 0:
                heapq.heappush(heap, (-counts[pair], pair))
            else:
                del counts[pair]
    return merges


def count_words(texts: Iterable[str]) -> Counter[str]:
    """How often each word occurs in `texts`, split as CLIP's tokenizer splits them ([`clip_words`]): lowercase
    runs of letters, in any script ("café", "猫").

    Digits are left out (CLIP's tokenizer reads them one by one, and every digit is a token of
    [`build_word_level_clip_tokenizer`]'s vocabulary); so is punctuation. Words with letters outside a-z are counted
    too: the caller decides what to do with them (only a tokenizer with `byte_fallback=True` can make them tokens).
    """
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(word for word in clip_words(text) if word.isalpha())
    return counts


def build_word_level_clip_tokenizer(
    words: Iterable[str], model_max_length: int = 77, byte_fallback: bool = False
) -> CLIPTokenizer:
    """Build a `CLIPTokenizer` (byte-pair encoding, CLIP's own file format) in which every listed word is one token.

    The merges are learnt by byte-pair encoding training on the word list itself until every word is one symbol
    (ties broken by the smallest pair, so the same words always give the same files). Encoding a listed word
    replays its training merges and ends in the single token `word</w>`; hand-written merge chains do not (a merge
    of one word, e.g. `a n`, fires inside another, e.g. "triangle"). Any other text still tokenises, character by
    character (byte by byte outside a-z and 0-9, with `byte_fallback`).

    Without `byte_fallback` the characters are a-z and 0-9, and any other character maps to `<|unk|>` (never to
    EOS, which would move CLIP's pooling position): the closed vocabulary of the demo world and the tests. With
    `byte_fallback` the vocabulary holds every byte, as CLIP's own does, so that no text is unknown: `decode` gives
    back the (normalised) text of any caption, accented or in any script, and words of any script can be tokens.

    The end-of-text token gets the highest id, as in CLIP's own vocabulary: `CLIPTextModel` pools at the first
    EOS position, except when `eos_token_id == 2`, where it falls back to the legacy rule (argmax of the ids).
    Padding uses the EOS token, also as in CLIP.

    Args:
        words: the words that become tokens (duplicates are ignored): made of a-z and 0-9, or, with
            `byte_fallback`, any word as CLIP's tokenizer splits text ([`clip_words`]: lowercase, NFC).
        model_max_length: maximum sequence length, including the BOS and EOS tokens.
        byte_fallback: every byte in the vocabulary (512 symbols, inside and at the end of a word, instead of 72).
    """
    words = list(dict.fromkeys(words))
    for word in words:
        if byte_fallback and clip_words(word) != [word]:
            raise ValueError(f"Words must each be one word as CLIP's tokenizer splits text (lowercase), got {word!r}.")
        if not byte_fallback and (not word or not set(word) <= set(ALPHABET)):
            raise ValueError(f"Words must be non-empty and made of a-z and 0-9, got {word!r}.")
    symbols = list(ALPHABET)
    encoded = words
    if byte_fallback:  # the other bytes after a-z and 0-9, and the words in byte-level symbols
        symbols += [symbol for symbol in BYTE_SYMBOLS.values() if symbol not in ALPHABET]
        encoded = [_byte_level(word) for word in words]
    merges = _learn_merges(encoded)
    vocab: dict[str, int] = {}
    for char in symbols:  # every character, inside and at the end of a word
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    for special in (UNK_TOKEN, BOS_TOKEN, EOS_TOKEN):
        vocab.setdefault(special, len(vocab))
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=merges,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
    )
    split = [word for word, symbols in zip(words, encoded) if tokenizer.tokenize(word) != [symbols + "</w>"]]
    if split:  # byte-pair encoding replays its training merges, so this cannot happen; keep the promise checked
        raise RuntimeError(f"Words not encoded as single tokens: {split[:10]}")
    return tokenizer
