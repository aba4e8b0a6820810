"""A built-in synthetic "shapes world" for attribute binding: scenes of 2-4 coloured, patterned shapes drawn with PIL,
long captions that a bag of words can match, probes that it cannot (SugarCrepe-style), zero-shot and retrieval sets,
a closed-vocabulary tokenizer and tiny CLIP/SigLIP configurations that train on a CPU in minutes."""

from .captions import CAPTION_TEMPLATES, CaptionSpec, bow_caption, fill_template, object_phrase, sample_caption_spec
from .generate import GENERATOR_VERSION, ZEROSHOT_TEMPLATES, GenerateArguments, generate_world, main, read_world_info
from .probes import BINDING_PAIRS, PROBE_KINDS, Probe, make_binding_probe, make_probe
from .scenes import Scene, ShapeObject, render_scene, sample_scene, scene_rng, unseen_combinations
from .vocabulary import ATTRIBUTES, BACKGROUNDS, PALETTE, PATTERNS, SHAPES, SIZES, WorldConfig

__all__ = [
    "ATTRIBUTES",
    "BACKGROUNDS",
    "BINDING_PAIRS",
    "CAPTION_TEMPLATES",
    "GENERATOR_VERSION",
    "PALETTE",
    "PATTERNS",
    "PROBE_KINDS",
    "SHAPES",
    "SIZES",
    "ZEROSHOT_TEMPLATES",
    "CaptionSpec",
    "GenerateArguments",
    "Probe",
    "Scene",
    "ShapeObject",
    "WorldConfig",
    "bow_caption",
    "fill_template",
    "generate_world",
    "main",
    "make_binding_probe",
    "make_probe",
    "object_phrase",
    "read_world_info",
    "render_scene",
    "sample_caption_spec",
    "sample_scene",
    "scene_rng",
    "unseen_combinations",
]
