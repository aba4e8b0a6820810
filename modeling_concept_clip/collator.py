"""Batch collation for C2LIP training: images, captions and the flattened concept batch.

Each row gives one image, one caption and its concepts. The concepts of all rows are concatenated into one
`(num_concepts, length)` batch with `concept_image_index` (the row of each concept), `concept_ids` (a stable
identity of each concept's normalised text, for "shared" positives), and the distinct token rows
(`concept_unique_index`, `concept_unique_inverse`, and `concept_unique_keys`, a host-side list that identifies them
across processes): the model encodes each distinct concept once. Everything whose size or value depends on the data
is decided here, on the CPU in the loader workers, so that the model's step makes no host sync.

With `hard_negatives="swap"` (NegCLIP's baseline), each caption also gets at most one hard negative, made from its
concepts by exchanging an attribute between two of its noun phrases (`concepts.negatives.swap_negative`): the
negatives of the batch are `negative_input_ids`/`negative_attention_mask`, with as many rows as captions got one (zero
rows when none did). It is made here, from the concepts column, by string operations (no parse), so it costs nothing
to cache and works on streams; the training loop counts the captions without one.

A bad row (image missing or unreadable, caption empty or not a string, no concepts) is dropped from its batch and
reported in `batch["skipped"]`, so the training loop can count it; it never raises inside a data-loader worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from .concepts import concept_id
from .concepts.negatives import HARD_NEGATIVE_MODES, swap_negative

SKIP_REASONS = ("image", "caption", "concepts")


@dataclass
class SkippedRow:
    reason: str  # one of SKIP_REASONS
    detail: str  # what was wrong, naming the row (image path or caption)
    position: int | None = None  # its position in the rows given to the collator
    index: int | None = None  # its index in the dataset, where the data loader knows it (training's bad-row counts)


def unique_rows(*tensors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`(index, inverse)` of the distinct rows of the row-aligned 2-D `tensors`, in order of first occurrence:
    `rows[index]` are the distinct rows and `rows[index][inverse]` gives every row back."""
    keys = list(zip(*(map(tuple, tensor.tolist()) for tensor in tensors)))
    first_row: dict = {}
    for row, key in enumerate(keys):
        first_row.setdefault(key, row)
    position = {key: i for i, key in enumerate(first_row)}
    index, inverse = list(first_row.values()), [position[key] for key in keys]
    return torch.tensor(index, dtype=torch.long), torch.tensor(inverse, dtype=torch.long)


def token_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> list[int]:
    """A 63-bit key of each row's unpadded tokens (BLAKE2b): equal on every process for the same text, whatever the
    padding length of its batch; what global deduplication (`ConceptLossConfig.global_concept_dedup`) exchanges."""
    rows = input_ids.tolist()
    masks = [None] * len(rows) if attention_mask is None else attention_mask.tolist()
    keys = []
    for row, mask in zip(rows, masks):
        tokens = row if mask is None else [token for token, keep in zip(row, mask) if keep]
        digest = hashlib.blake2b(repr(tokens).encode(), digest_size=8).digest()
        keys.append(int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF)
    return keys


def _describe(row: dict[str, Any], image_column: str) -> str:
    value = row.get(image_column)
    if isinstance(value, dict):
        value = value.get("path") or "<image bytes>"
    return str(value)[:200]


@dataclass
class ConceptCollator:
    """Turn dataset rows into the inputs of `ConceptCLIPModel`/`ConceptSiglipModel`.

    Args:
        processor: the checkpoint's processor (image processor + tokenizer); the PIL image backend is enough.
        image_column: column with an image path (relative to `image_root`), a `PIL.Image`, or a `datasets`
            undecoded image (`{"bytes": ..., "path": ...}`).
        caption_column: column with the caption string.
        concepts_column: column with the list of concept strings (or its JSON text, as CSV files hold it); `None`
            gives caption-only batches (the control).
        image_root: folder of relative image paths.
        max_concepts_per_image: keep the first concepts of each caption (caption order) up to this many.
        pad_to_max_length: pad every text to the tokenizer's maximum length (SigLIP pools the last position, so
            it must see texts padded as in its training); otherwise pad to the longest text of the batch (CLIP).
        concept_inputs: pass the concepts to the model (the concept losses). False reads `concepts_column` only
            to make the hard negatives: a row without concepts is then kept, without a negative.
        hard_negatives: `"none"`, or `"swap"`: one negative per caption where its noun phrases allow it (NegCLIP's
            baseline; needs `concepts_column`).
        hard_negative_seed: picks among a caption's candidate swaps (same seed, same negatives).
    """

    processor: Any
    image_column: str = "image"
    caption_column: str = "caption"
    concepts_column: str | None = "concepts"
    image_root: str | None = None
    max_concepts_per_image: int | None = 8
    pad_to_max_length: bool = False
    concept_inputs: bool = True
    hard_negatives: str = "none"
    hard_negative_seed: int = 0

    def __post_init__(self):
        if self.hard_negatives not in HARD_NEGATIVE_MODES:
            raise ValueError(f"hard_negatives must be one of {HARD_NEGATIVE_MODES}, got {self.hard_negatives!r}.")
        if self.hard_negatives != "none" and self.concepts_column is None:
            raise ValueError("hard_negatives are made from the concepts: give a concepts_column.")

    def _load_image(self, value: Any) -> Image.Image:
        if isinstance(value, Image.Image):
            image = value
        elif isinstance(value, dict) and value.get("bytes"):
            image = Image.open(io.BytesIO(value["bytes"]))
        elif isinstance(value, (dict, str)):
            path = value.get("path") if isinstance(value, dict) else value
            if not path:
                raise ValueError("no image")
            if self.image_root and not os.path.isabs(path):
                path = os.path.join(self.image_root, path)
            image = Image.open(path)
        else:
            raise ValueError(f"unsupported image value of type {type(value).__name__}")
        image.load()
        return image.convert("RGB")

    def _tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        tokenizer = self.processor.tokenizer
        padding = "max_length" if self.pad_to_max_length else True
        encoded = tokenizer(texts, padding=padding, truncation=True, return_tensors="pt")
        return {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        images, captions, concepts, all_concepts, skipped = [], [], [], [], []
        for position, row in enumerate(rows):
            caption = row.get(self.caption_column)
            if not isinstance(caption, str) or not caption.strip():
                detail = f"{_describe(row, self.image_column)}: caption {caption!r}"
                skipped.append(SkippedRow("caption", detail, position))
                continue
            row_concepts = []
            if self.concepts_column is not None:
                value = row.get(self.concepts_column)
                if isinstance(value, str):  # CSV cells hold the list as JSON text
                    try:
                        value = json.loads(value)
                    except json.JSONDecodeError:
                        value = None
                if not isinstance(value, list):
                    value = None
                row_concepts = [c for c in (value or []) if isinstance(c, str) and c.strip()]
                # Without the concept losses a row without concepts stays (with no hard negative), as in the control.
                if not row_concepts and self.concept_inputs:
                    skipped.append(
                        SkippedRow("concepts", f"{_describe(row, self.image_column)}: no concepts", position)
                    )
                    continue
            try:
                image = self._load_image(row.get(self.image_column))
            except Exception as error:  # any unreadable image is a counted skip, whatever PIL raises
                skipped.append(SkippedRow("image", f"{_describe(row, self.image_column)}: {error}", position))
                continue
            images.append(image)
            captions.append(caption)
            all_concepts.append(row_concepts)
            concepts.append(row_concepts[: self.max_concepts_per_image])

        batch: dict[str, Any] = {"skipped": skipped, "num_rows": len(rows)}
        if not images:
            return batch
        batch["pixel_values"] = self.processor.image_processor(images, return_tensors="pt").pixel_values
        # Whatever the tokenizer returns: SigLIP's own tokenizer gives no attention mask (its pads are attended).
        caption_tokens = self._tokenize(captions)
        batch.update(caption_tokens)
        if self.hard_negatives == "swap":
            # All concepts, not the first max_concepts_per_image: the negative may swap between any two phrases.
            made = [swap_negative(c, k, self.hard_negative_seed) for c, k in zip(captions, all_concepts)]
            negatives = [negative for negative in made if negative is not None]
            tokens = self._tokenize(negatives) if negatives else {k: v[:0] for k, v in caption_tokens.items()}
            batch.update({f"negative_{key}": value for key, value in tokens.items()})
        if self.concepts_column is not None and self.concept_inputs:
            flat = [c for row_concepts in concepts for c in row_concepts]
            tokens = self._tokenize(flat)
            batch.update({f"concept_{key}": value for key, value in tokens.items()})
            batch["concept_unique_index"], batch["concept_unique_inverse"] = unique_rows(*tokens.values())
            distinct = {key: value[batch["concept_unique_index"]] for key, value in tokens.items()}
            batch["concept_unique_keys"] = token_keys(distinct["input_ids"], distinct.get("attention_mask"))
            batch["concept_image_index"] = torch.tensor(
                [i for i, row_concepts in enumerate(concepts) for _ in row_concepts], dtype=torch.long
            )
            batch["concept_ids"] = torch.tensor([concept_id(c) for c in flat], dtype=torch.long)
        return batch


__all__ = ["SKIP_REASONS", "ConceptCollator", "SkippedRow", "token_keys", "unique_rows"]
