"""Small CLIP and SigLIP models built from a tokenizer and a size, to train from scratch on a CPU.

Used by the built-in shapes world (`shapes_world.configs`) and by `concept-clip-init`, which writes one for your own
captions. Token ids (vocabulary size, BOS, EOS = padding) come from the tokenizer, normally a word-level tokenizer of
`modeling_concept_clip.tokenization`, whose EOS has the highest id: CLIP then pools the text at the first EOS (not at
the legacy argmax of the ids, which `transformers` uses when `eos_token_id == 2`).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ProcessorMixin,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

logger = logging.getLogger(__name__)

# Written next to randomly initialised weights (`concept-clip-init`, the shapes world's initial model): training from
# such a folder is recorded as starting from a random initialisation, not as a fine-tune of it.
INIT_RECORD = "random_init.json"


def write_init_record(folder: str | Path, **details) -> Path:
    """Record in `folder` that its weights are a random initialisation, with how they were made (`details`)."""
    path = Path(folder) / INIT_RECORD
    path.write_text(json.dumps({"initial_weights": "random", **details}, indent=2) + "\n", encoding="utf-8")
    return path


def read_init_record(folder: str | Path) -> dict | None:
    """What `write_init_record` wrote in `folder` (`None` for any other folder or a Hub id)."""
    path = Path(folder) / INIT_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


# Initial logit scale and bias of a SigLIP trained from scratch (Zhai et al., 2023).
SIGLIP_INIT_SCALE, SIGLIP_INIT_BIAS = 10.0, -10.0


def _tower_configs(
    tokenizer: PreTrainedTokenizerBase,
    image_size: int,
    patch_size: int,
    width: int,
    layers: int,
    heads: int,
    **text_extra,
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


def small_clip_config(
    tokenizer: PreTrainedTokenizerBase,
    image_size: int = 48,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 3,
    heads: int = 4,
    projection_dim: int = 128,
) -> CLIPConfig:
    """A small CLIP: `layers` transformer layers of `width` in each tower (default 3 x 128, 36 patches of 8 pixels
    on 48-pixel images, the shapes world's model). Token ids (vocabulary, BOS, EOS = padding) come from `tokenizer`;
    its EOS must be its highest id, so that CLIP pools the text at the first EOS.
    """
    text, vision = _tower_configs(tokenizer, image_size, patch_size, width, layers, heads)
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)


def small_siglip_config(
    tokenizer: PreTrainedTokenizerBase,
    image_size: int = 48,
    patch_size: int = 8,
    width: int = 128,
    layers: int = 3,
    heads: int = 4,
) -> SiglipConfig:
    """A small SigLIP (attention-pooling head included) with the same towers as `small_clip_config`. SigLIP pools the
    last text position, so texts are padded to `max_length` (64, as the zero-shot pipeline pads SigLIP prompts)."""
    if tokenizer.model_max_length < 64:
        raise ValueError("SigLIP texts are padded to 64 tokens by the zero-shot pipeline: use model_max_length >= 64.")
    text, vision = _tower_configs(tokenizer, image_size, patch_size, width, layers, heads, projection_size=width)
    return SiglipConfig(text_config=text, vision_config=vision)


def build_small_model_and_processor(
    model_type: str, tokenizer: PreTrainedTokenizerBase, image_size: int, seed: int = 0, **config_kwargs
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """A freshly initialised `CLIPModel` or `SiglipModel` (float32) and its processor (PIL image backend, `tokenizer`)
    for images of `image_size` pixels. `config_kwargs` go to `small_clip_config` / `small_siglip_config` (width,
    layers, heads, patch_size, ...). A SigLIP starts at logit scale 10 and bias -10, as in the SigLIP paper.

    CLIP's processor resizes the shorter side to `image_size` and crops the centre square; SigLIP's resizes the whole
    image to a square, as their pretrained processors do.
    """
    import torch

    torch.manual_seed(seed)
    if model_type == "clip":
        model: PreTrainedModel = CLIPModel(small_clip_config(tokenizer, image_size=image_size, **config_kwargs))
        image_processor = CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
        processor: ProcessorMixin = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    elif model_type == "siglip":
        model = SiglipModel(small_siglip_config(tokenizer, image_size=image_size, **config_kwargs))
        # transformers starts at scale 1 and bias 0, where the sigmoid loss of a batch of 128 is dominated by its
        # 127 x 128 negatives and barely trains.
        with torch.no_grad():
            model.logit_scale.fill_(math.log(SIGLIP_INIT_SCALE))
            model.logit_bias.fill_(SIGLIP_INIT_BIAS)
        image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        raise ValueError(f"model_type must be 'clip' or 'siglip', got {model_type!r}.")
    num_parameters = sum(p.numel() for p in model.parameters())
    logger.info("Initialised a small %s: %.2fM parameters.", model_type, num_parameters / 1e6)
    return model, processor
