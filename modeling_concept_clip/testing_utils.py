"""Tiny CLIP/SigLIP models and processors built from configs, for tests and benchmarks that run offline."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPProcessor,
    PreTrainedModel,
    SiglipConfig,
    SiglipImageProcessorPil,
    SiglipModel,
    SiglipProcessor,
)

from .tokenization import build_word_level_clip_tokenizer

TINY_WORDS = (
    "a an the photo of and with on left right next to small big red green blue yellow black white "
    "circle square triangle star cat dog man woman car couch lamp tree sky"
).split()


def _tiny_towers(vocab_size: int, eos_token_id: int, bos_token_id: int, max_positions: int, overrides: dict):
    """Text and vision config dicts of 2 layers, width 32, on 32x32 images (16 patches of 8x8)."""
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    text = dict(
        vocab_size=vocab_size, max_position_embeddings=max_positions, eos_token_id=eos_token_id,
        bos_token_id=bos_token_id, pad_token_id=eos_token_id, **sizes,
    )  # fmt: skip
    vision = dict(image_size=32, patch_size=8, **sizes)
    text.update(overrides.pop("text_config", {}))
    vision.update(overrides.pop("vision_config", {}))
    return text, vision


def tiny_clip_config(vocab_size: int, eos_token_id: int, bos_token_id: int, **overrides) -> CLIPConfig:
    """A 2-layer CLIP with width 32 on 32x32 images (16 patches of 8x8)."""
    text, vision = _tiny_towers(vocab_size, eos_token_id, bos_token_id, 32, overrides)
    return CLIPConfig(
        text_config=text, vision_config=vision, projection_dim=overrides.pop("projection_dim", 24), **overrides
    )


def tiny_siglip_config(vocab_size: int, eos_token_id: int, bos_token_id: int, **overrides) -> SiglipConfig:
    """A 2-layer SigLIP with width 32 on 32x32 images (16 patches of 8x8), attention-pooling head included.

    Texts are 64 positions long, as in SigLIP: the zero-shot pipeline pads SigLIP prompts to 64 tokens.
    """
    text, vision = _tiny_towers(vocab_size, eos_token_id, bos_token_id, 64, overrides)
    return SiglipConfig(text_config=text, vision_config=vision, **overrides)


def build_tiny_model_and_processor(model_type: str = "clip", words=TINY_WORDS, seed: int = 0):
    """Return `(model, processor)` of a randomly initialised tiny `CLIPModel` or `SiglipModel` (float32, eval mode).

    The processor uses the PIL image backend (no torchvision needed) and a closed-vocabulary CLIP tokenizer.
    """
    import torch

    tokenizer = build_word_level_clip_tokenizer(words, model_max_length=32 if model_type == "clip" else 64)
    ids = dict(vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    if model_type == "clip":
        model: PreTrainedModel = CLIPModel(tiny_clip_config(**ids))
        image_processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    elif model_type == "siglip":
        model = SiglipModel(tiny_siglip_config(**ids))
        image_processor = SiglipImageProcessorPil(size={"height": 32, "width": 32})
        processor = SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer)
    else:
        raise ValueError(f"model_type must be 'clip' or 'siglip', got {model_type!r}")
    return model.eval(), processor


def save_tiny_checkpoint(path: str | Path, model_type: str = "clip", seed: int = 0) -> Path:
    """Write a tiny checkpoint folder (safetensors weights, config, processor) that loads offline."""
    model, processor = build_tiny_model_and_processor(model_type, seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return Path(path)
