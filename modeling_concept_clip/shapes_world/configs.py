"""The tokenizer of the shapes world and tiny CLIP/SigLIP models sized to train on a few CPU cores in minutes."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
    PreTrainedModel,
    ProcessorMixin,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

from ..tokenization import build_word_level_clip_tokenizer
from .captions import template_words
from .generate import ZEROSHOT_TEMPLATES
from .vocabulary import BACKGROUNDS, PALETTE, PATTERNS, SHAPES, SIZES, WorldConfig

logger = logging.getLogger(__name__)

# Text length: the longest caption (an add_obj negative of a 4-object scene, "there is ... and there is ...") has
# 45 tokens with BOS and EOS; SigLIP needs 64 since the zero-shot pipeline pads SigLIP prompts to 64 tokens.
WORLD_MAX_LENGTH = 64
# Initial logit scale and bias of a world SigLIP (Zhai et al., 2023).
SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS = 10.0, -10.0
# Words of `transformers`' default zero-shot template "This is a photo of {}." (its "." still maps to <|unk|>).
PIPELINE_TEMPLATE_WORDS = ("this", "is", "a", "photo", "of")


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


def _tower_configs(
    tokenizer: CLIPTokenizer, image_size: int, patch_size: int, width: int, layers: int, heads: int, **text_extra
) -> tuple[dict, dict]:
    """(text, vision) config kwargs: `layers` x `width` towers; token ids and vocabulary from `tokenizer`."""
    sizes = dict(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads)
    text = dict(
        vocab_size=len(tokenizer),
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **text_extra,
        **sizes,
    )
    return text, dict(image_size=image_size, patch_size=patch_size, **sizes)


def world_clip_config(
    tokenizer: CLIPTokenizer,
    image_size: int = 48,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 3,
    heads: int = 4,
    projection_dim: int = 128,
) -> CLIPConfig:
    """A small CLIP for the shapes world: `layers` transformer layers of `width` in each tower (default 3 x 128,
    36 patches of 8 pixels on 48-pixel images). Token ids (vocabulary, BOS, EOS = padding) come from `tokenizer`;
    EOS is its highest id, so CLIP pools the text at the first EOS (not the legacy argmax rule of `eos_token_id == 2`).
    """
    text, vision = _tower_configs(tokenizer, image_size, patch_size, width, layers, heads)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def world_siglip_config(
    tokenizer: CLIPTokenizer,
    image_size: int = 48,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 3,
    heads: int = 4,
) -> SiglipConfig:
    """A small SigLIP (attention-pooling head included) with the same towers as `world_clip_config`. SigLIP pools the
    last text position, so texts are padded to `max_length` (64, as the zero-shot pipeline pads SigLIP prompts)."""
    if tokenizer.model_max_length < 64:
        raise ValueError("SigLIP texts are padded to 64 tokens by the zero-shot pipeline: use model_max_length >= 64.")
    text, vision = _tower_configs(tokenizer, image_size, patch_size, width, layers, heads, projection_size=width)
    return SiglipConfig(text_config=text, vision_config=vision)


def build_world_model_and_processor(
    model_type: str = "clip", world: WorldConfig | None = None, seed: int = 0, **config_kwargs
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised `CLIPModel` or `SiglipModel` (float32) and its processor (PIL image backend, world
    tokenizer) for images of `world.image_size` pixels. `config_kwargs` go to `world_clip_config` /
    `world_siglip_config` (width, layers, heads, patch_size (default: the grid's `cell_size`), ...)."""
    import torch

    world = world or WorldConfig()
    if world.placement == "grid":  # patches on the world's cells: a shape shows the same patches wherever it is
        config_kwargs.setdefault("patch_size", world.cell_size)
    size = world.image_size
    tokenizer = build_world_tokenizer()
    torch.manual_seed(seed)
    if model_type == "clip":
        model: PreTrainedModel = CLIPModel(world_clip_config(tokenizer, image_size=size, **config_kwargs))
        # The images already have the model's size: resizing and cropping are identities.
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}
        )
        processor: ProcessorMixin = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    elif model_type == "siglip":
        model = SiglipModel(world_siglip_config(tokenizer, image_size=size, **config_kwargs))
        # The SigLIP paper's initialisation, t' = log 10 and b = -10 (`transformers` starts at scale 1 and bias 0,
        # where the sigmoid loss of a batch of 128 is dominated by its 127 x 128 negatives and barely trains).
        with torch.no_grad():
            model.logit_scale.fill_(math.log(SIGLIP_INIT_SCALE))
            model.logit_bias.fill_(SIGLIP_INIT_BIAS)
        image_processor = SiglipImageProcessorPil(size={"height": size, "width": size})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        raise ValueError(f"model_type must be 'clip' or 'siglip', got {model_type!r}.")
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("Initialised a %s for the shapes world: %.2fM parameters.", model_type, num_parameters / 1e6)
    return model, processor


def save_world_checkpoint(
    path: str | Path, model_type: str = "clip", world: WorldConfig | None = None, seed: int = 0, **config_kwargs
) -> Path:
    """Write a freshly initialised world model and its processor into one folder that `from_pretrained`,
    `AutoProcessor` and `pipeline("zero-shot-image-classification")` load offline."""
    model, processor = build_world_model_and_processor(model_type, world, seed, **config_kwargs)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Path(path)
