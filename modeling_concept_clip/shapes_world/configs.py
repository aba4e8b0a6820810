"""The tokenizer of the shapes world and tiny CLIP/SigLIP models sized to train on a few CPU cores in minutes."""

from __future__ import annotations

import re
from pathlib import Path

from transformers import CLIPTokenizer, PreTrainedModel, ProcessorMixin

from ..small_models import build_small_model_and_processor, write_init_record
from ..tokenization import PIPELINE_TEMPLATE_WORDS, build_word_level_clip_tokenizer
from .captions import template_words
from .generate import ZEROSHOT_TEMPLATES
from .vocabulary import BACKGROUNDS, PALETTE, PATTERNS, SHAPES, SIZES, WorldConfig

# Text length: the longest caption (an add_obj negative of a 4-object scene, "there is ... and there is ...") has
# 45 tokens with BOS and EOS; SigLIP needs 64 since the zero-shot pipeline pads SigLIP prompts to 64 tokens.
WORLD_MAX_LENGTH = 64


def world_words() -> list[str]:
    """Every word the world can produce: caption frames, attribute values of any `WorldConfig`, zero-shot templates.

    Independent of the `WorldConfig` subset, so one tokenizer (and its ids) serves every world of this version.
    """
    words = list(template_words())
    for values in (SIZES, PALETTE, PATTERNS, SHAPES, BACKGROUNDS):
        words += list(values)
    for templates in ZEROSHOT_TEMPLATES.values():
        for template in templates:
            words += re.findall(r"[a-z0-9]+", template)
    words += PIPELINE_TEMPLATE_WORDS
    return list(dict.fromkeys(words))


def build_world_tokenizer(model_max_length: int = WORLD_MAX_LENGTH) -> CLIPTokenizer:
    """A CLIP-format tokenizer in which every world word is one token and EOS has the highest id (also padding)."""
    return build_word_level_clip_tokenizer(world_words(), model_max_length=model_max_length)


def build_world_model_and_processor(
    model_type: str = "clip", world: WorldConfig | None = None, seed: int = 0, **config_kwargs
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised `CLIPModel` or `SiglipModel` (float32) and its processor (PIL image backend, world
    tokenizer) for images of `world.image_size` pixels. `config_kwargs` go to `small_models.small_clip_config` /
    `small_siglip_config` (width, layers, heads, patch_size (default: the grid's `cell_size`), ...)."""
    world = world or WorldConfig()
    if world.placement == "grid":  # patches on the world's cells: a shape shows the same patches wherever it is
        config_kwargs.setdefault("patch_size", world.cell_size)
    return build_small_model_and_processor(
        model_type, build_world_tokenizer(), world.image_size, seed, **config_kwargs
    )


def save_world_checkpoint(
    path: str | Path, model_type: str = "clip", world: WorldConfig | None = None, seed: int = 0, **config_kwargs
) -> Path:
    """Write a freshly initialised world model and its processor into one folder that `from_pretrained`,
    `AutoProcessor` and `pipeline("zero-shot-image-classification")` load offline."""
    model, processor = build_world_model_and_processor(model_type, world, seed, **config_kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    write_init_record(path, command="shapes_world.save_world_checkpoint", model_type=model_type, seed=seed)
    return Path(path)
