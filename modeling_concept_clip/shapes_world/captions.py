"""Captions of the shapes world: one noun phrase per object, put in varied sentence templates and orders.

Captions have no punctuation: the world tokenizer (`build_word_level_clip_tokenizer`) only knows a-z and 0-9 and maps
any other character to `<|unk|>`. The frames around the noun phrases contain no other noun, so spaCy's noun chunks of
a caption are exactly its objects (and "a gray background" when the background is named).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from .scenes import Scene, ShapeObject
from .vocabulary import ATTRIBUTES

# `{all}`: every object joined by "and"; `{first}` / `{rest}`: the first object / the others joined by "and";
# `{each}`: every object, joined by "and there is".
# Chosen among candidates for how well spaCy's `en_core_web_sm` recovers every object as a noun chunk (97-100% each).
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{all}",
    "there is {all}",
    "{all} are shown",
    "{all} can be seen",
    "{all} are visible",
    "{first} appears together with {rest}",
    "{first} with {rest}",
    "there is {each}",
    "{all} are drawn",
    "{first} is shown with {rest}",
)
BACKGROUND_SUFFIX = "on {background} background"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: ShapeObject, attributes: Collection[str] = ("size", "color", "pattern", "shape")) -> str:
    """The noun phrase of an object naming `attributes`, in the order size, colour, pattern, shape: "a big red stripy
    circle" (all), "a red circle" (colour and shape); without "shape" the noun is the word "shape" ("a big red shape").
    """
    words = [obj.get(attribute) for attribute in ATTRIBUTES if attribute in attributes]
    words.append(obj.shape if "shape" in attributes else "shape")
    return f"{article(words[0])} {' '.join(words)}"


def background_phrase(background: str) -> str:
    return f"{article(background)} {background} background"


def fill_template(template: int, phrases: Sequence[str], background: str | None = None) -> str:
    """Put noun phrases into caption template number `template` (an index into `CAPTION_TEMPLATES`), optionally
    followed by "on a <colour> background"."""
    if not phrases:
        raise ValueError("A caption needs at least one object.")
    text = CAPTION_TEMPLATES[template]
    if len(phrases) == 1:  # no "rest" to go with, and a singular verb
        text = CAPTION_TEMPLATES[0] if "{rest}" in text else text.replace("{all} are", "{all} is")
    text = text.format(
        all=" and ".join(phrases),
        first=phrases[0],
        rest=" and ".join(phrases[1:]),
        each=" and there is ".join(phrases),
    )
    if background is not None:
        text += " on " + background_phrase(background)
    return text


@dataclass(frozen=True)
class CaptionSpec:
    """How a caption was made: template number, the order of the scene's objects, whether the background is named.

    Applying the same spec to a modified object list gives a negative caption that differs only by the modification.
    """

    template: int
    order: tuple[int, ...]
    mention_background: bool

    def render(
        self,
        scene: Scene,
        objects: Sequence[ShapeObject] | None = None,
        attributes: Collection[str] = ("size", "color", "pattern", "shape"),
    ) -> str:
        """The caption of `scene`, or of `objects` (in caption order) on the scene's background, naming `attributes`
        of every object (see `object_phrase`)."""
        if objects is None:
            objects = [scene.objects[i] for i in self.order]
        background = scene.background if self.mention_background else None
        return fill_template(self.template, [object_phrase(obj, attributes) for obj in objects], background)


def sample_caption_spec(rng: np.random.Generator, scene: Scene, background_mention_prob: float) -> CaptionSpec:
    """A random template, a random object order and a coin flip for naming the background."""
    return CaptionSpec(
        template=int(rng.integers(len(CAPTION_TEMPLATES))),
        order=tuple(int(i) for i in rng.permutation(len(scene.objects))),
        mention_background=bool(rng.random() < background_mention_prob),
    )


def content_words(scene: Scene, spec: CaptionSpec | None = None) -> list[str]:
    """The attribute and shape words of a scene (background colour and "background" when the caption names it)."""
    words = [word for obj in scene.objects for word in (obj.size, obj.color, obj.pattern, obj.shape)]
    if spec is not None and spec.mention_background:
        words += [scene.background, "background"]
    return words


def bow_caption(
    rng: np.random.Generator,
    scene: Scene,
    spec: CaptionSpec | None = None,
    mention_prob: float = 1.0,
    per_object: bool = False,
) -> str:
    """Caption words in a random order: what the caption says, with the binding of attributes to objects thrown away
    (for pretraining a bag-of-words prior, like web alt-text that made CLIP a bag of words).

    With `spec`, the words of `spec.render(scene)` (frame words and articles included, so that the prior's text tower
    sees the same words as the real captions and transfers to them), naming each attribute type (size, colour,
    pattern) with probability `mention_prob` and always the shapes: captions that name less make every attribute
    type, shape included, necessary to tell scenes apart (with every attribute named, colours and patterns alone
    identify a scene in a batch, and a prior never learns to see shape). `per_object`: the coin is flipped for each
    attribute of each object (every type then names some objects and not others in most captions), instead of once
    per attribute type for the whole caption. Without `spec`, the scene's content words.
    """
    if spec is None:
        words = content_words(scene)
    elif per_object:
        phrases = [
            object_phrase(scene.objects[i], [a for a in ATTRIBUTES if rng.random() < mention_prob] + ["shape"])
            for i in spec.order
        ]
        background = scene.background if spec.mention_background else None
        words = fill_template(spec.template, phrases, background).split()
    else:
        named = [attribute for attribute in ATTRIBUTES if rng.random() < mention_prob]
        words = spec.render(scene, attributes=[*named, "shape"]).split()
    return " ".join(words[i] for i in rng.permutation(len(words)))


def template_words() -> list[str]:
    """Every word of the caption templates (for the tokenizer)."""
    text = " ".join(CAPTION_TEMPLATES + (BACKGROUND_SUFFIX, "a an and there is background"))
    return list(dict.fromkeys(re.findall(r"[a-z0-9]+", re.sub(r"\{[a-z]+\}", " ", text))))
