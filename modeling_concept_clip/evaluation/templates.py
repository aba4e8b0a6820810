"""Prompt templates of zero-shot classification: a class name becomes several captions whose embeddings are averaged.

`imagenet80` is the ensemble of 80 prompts that CLIP (Radford et al., 2021) used for ImageNet and that open_clip
and CLIP_benchmark reuse; `simple` is the single prompt "a photo of a {}."; `classname` is the bare name.
"""

from __future__ import annotations

from pathlib import Path

from .data import EvaluationDataError, read_json

IMAGENET_TEMPLATES = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "imagenet80": IMAGENET_TEMPLATES,
    "simple": ("a photo of a {}.",),
    "classname": ("{}",),
}


def load_templates(spec: str) -> tuple[str, ...]:
    """A named set (`imagenet80`, `simple`, `classname`) or a file: `.json` list or `.txt` with one per line.

    A template holds the class name as `{}` (OpenAI's notebooks) or `{c}` (CLIP_benchmark's files).
    """
    if spec in TEMPLATE_SETS:
        return TEMPLATE_SETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise EvaluationDataError(f"{spec}: neither a template set ({', '.join(TEMPLATE_SETS)}) nor a file")
    if path.suffix == ".json":
        templates = read_json(path)
    else:
        templates = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not isinstance(templates, list) or not templates:
        raise EvaluationDataError(f"{path}: expected a non-empty list of templates")
    for index, template in enumerate(templates):
        if not isinstance(template, str) or ("{}" not in template and "{c}" not in template):
            raise EvaluationDataError(f"{path}, template {index}: needs a '{{}}' or '{{c}}' placeholder")
    return tuple(templates)


def fill_template(template: str, class_name: str) -> str:
    return template.replace("{c}", class_name) if "{c}" in template else template.replace("{}", class_name)
