"""Hard-negative probes in the SugarCrepe categories, built from a held-out scene and its caption.

Every negative caption is rendered with the positive's template and object order (`CaptionSpec`), so the modification
is the only difference between the two:

- `swap_att`: one attribute type (size, colour or pattern) is exchanged between two objects. The negative has exactly
  the positive's words, so it can only be rejected by binding attributes to objects.
- `replace_att`: one attribute of one object is replaced by a value that no object of the scene has, so the negative
  names something absent from the image (as in SugarCrepe; a value present on another object would make a second
  binding test, which `swap_att` already is).
- `replace_obj`: one object's shape is replaced by a shape absent from the scene.
- `add_obj`: an extra object, whose shape is absent from the scene, is inserted at a random place in the caption
  (after the first object, so the words of the positive stay a subsequence of the negative).

A negative never describes the same set of objects as the positive and never lists the same object twice.

`swap_att` names every attribute of every object, so a model can reject a colour swap by binding colour to any of
the other attributes it perceives. The binding probes (`make_binding_probe`, one file per pair of `BINDING_PAIRS`)
isolate one pair: a short caption names two objects of the scene by those two attributes only ("a red circle and a
blue square"), and the negative exchanges the first attribute between them ("a blue circle and a red square"). Both
captions have the same words, and no object of the scene has either combination of the negative, so only the binding
of that pair decides.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .captions import CAPTION_TEMPLATES, CaptionSpec, fill_template, object_phrase
from .scenes import Scene, ShapeObject, sample_object
from .vocabulary import ATTRIBUTES, WorldConfig

PROBE_KINDS: tuple[str, ...] = ("swap_att", "replace_att", "replace_obj", "add_obj")
# (swapped attribute, attribute it is bound to) of the binding probes; file `binding/<first>_<second>.json`.
BINDING_PAIRS: tuple[tuple[str, str], ...] = (
    ("color", "shape"),
    ("color", "pattern"),
    ("color", "size"),
    ("pattern", "shape"),
)


@dataclass
class Probe:
    """A positive caption of a scene and a negative that differs by one modification, described in `change`
    ("position": index of the changed object in caption order, "attribute", "old"/"new" values, "added" phrase)."""

    kind: str
    caption: str
    negative_caption: str
    change: dict = field(default_factory=dict)


def _valid(objects: Sequence[ShapeObject], original: Scene, forbidden: Collection[tuple[str, str]]) -> bool:
    keys = sorted(obj.key for obj in objects)
    return (
        keys != original.keys()
        and len(set(keys)) == len(keys)
        and not any((obj.color, obj.shape) in forbidden for obj in objects)
    )


def _pick(rng: np.random.Generator, candidates: list):
    """A uniform choice, first over the change's attribute type (the first item), then among its candidates; this
    keeps the attribute types balanced although some have many more candidates than others."""
    if not candidates:
        return None
    types = sorted({candidate[0] for candidate in candidates})
    chosen = types[int(rng.integers(len(types)))]
    of_type = [candidate for candidate in candidates if candidate[0] == chosen]
    return of_type[int(rng.integers(len(of_type)))]


def make_probe(
    kind: str,
    rng: np.random.Generator,
    scene: Scene,
    spec: CaptionSpec,
    world: WorldConfig,
    forbidden: Collection[tuple[str, str]] = (),
    focus: Collection[int] | None = None,
) -> Probe | None:
    """Build one probe of `kind` (see `PROBE_KINDS`) for `scene` captioned with `spec`; None if the scene admits none.

    Args:
        forbidden: (colour, shape) pairs that no object of the negative may have (held-out combinations must not
            enter the in-distribution probes through their negatives).
        focus: indices (into `scene.objects`) of the objects a modification must involve, e.g. the objects with a
            held-out combination in the systematic-generalisation probes; None: any object.
    """
    ordered = [scene.objects[i] for i in spec.order]
    # Positions in caption order of the objects a change may touch.
    touchable = [p for p, i in enumerate(spec.order) if focus is None or i in focus]
    caption = spec.render(scene)
    candidates: list = []
    if kind == "swap_att":
        for attribute in ATTRIBUTES:
            for p in touchable:
                for q in range(len(ordered)):
                    if q == p or (q in touchable and q < p):  # each unordered pair once
                        continue
                    a, b = ordered[p], ordered[q]
                    if a.get(attribute) == b.get(attribute):
                        continue
                    objects = list(ordered)
                    objects[p] = replace(a, **{attribute: b.get(attribute)})
                    objects[q] = replace(b, **{attribute: a.get(attribute)})
                    if _valid(objects, scene, forbidden):
                        candidates.append((attribute, objects, {"attribute": attribute, "positions": sorted([p, q])}))
    elif kind in ("replace_att", "replace_obj"):
        attributes = ATTRIBUTES if kind == "replace_att" else ("shape",)
        for attribute in attributes:
            present = {obj.get(attribute) for obj in scene.objects}
            for value in world.values(attribute):
                if value in present:
                    continue
                for p in touchable:
                    objects = list(ordered)
                    objects[p] = replace(ordered[p], **{attribute: value})
                    if _valid(objects, scene, forbidden):
                        change = {
                            "attribute": attribute,
                            "position": p,
                            "old": ordered[p].get(attribute),
                            "new": value,
                        }
                        candidates.append((attribute, objects, change))
    elif kind == "add_obj":
        absent = [shape for shape in world.shapes if shape not in {obj.shape for obj in scene.objects}]
        if absent:
            shape = absent[int(rng.integers(len(absent)))]
            extra = sample_object(rng, world, forbidden, fixed={"shape": shape})
            # Never first: in "{first} with {rest}" templates a new first object would also change the frame.
            position = int(rng.integers(1, len(ordered) + 1))
            objects = ordered[:position] + [extra] + ordered[position:]
            candidates.append(("shape", objects, {"position": position, "added": object_phrase(extra)}))
    else:
        raise ValueError(f"kind must be one of {PROBE_KINDS}, got {kind!r}.")
    chosen = _pick(rng, candidates)
    if chosen is None:
        return None
    _, objects, change = chosen
    return Probe(kind=kind, caption=caption, negative_caption=spec.render(scene, objects), change=change)


def binding_probe_name(pair: tuple[str, str]) -> str:
    """File stem (and metric name) of the binding probes of `pair`: "color_shape"."""
    return "_".join(pair)


def make_binding_probe(
    pair: tuple[str, str],
    rng: np.random.Generator,
    scene: Scene,
    world: WorldConfig,
    forbidden: Collection[tuple[str, str]] = (),
    focus: Collection[int] | None = None,
) -> Probe | None:
    """A short caption naming two objects of `scene` by the attributes of `pair` only, and its negative with the first
    attribute exchanged between them; None if no two objects admit one.

    Two objects qualify when they differ in both attributes and no object of the scene has either exchanged
    combination (so each phrase of the negative is false of the image). Template and phrase order are random.

    Args:
        pair: (swapped attribute, attribute it stays with), e.g. `("color", "shape")`: "a red circle and a blue
            square" against "a blue circle and a red square".
        forbidden: (colour, shape) pairs that the negative may not name (held-out combinations).
        focus: indices (into `scene.objects`) of which one object must be one of the two; None: any object.
    """
    swapped, kept = pair
    if swapped == kept or not set(pair) <= {"shape", *ATTRIBUTES}:
        raise ValueError(f"pair must be two different attributes of {('shape', *ATTRIBUTES)}, got {pair}.")
    present = {(obj.get(swapped), obj.get(kept)) for obj in scene.objects}
    candidates = []
    for i, a in enumerate(scene.objects):
        for j in range(i + 1, len(scene.objects)):
            b = scene.objects[j]
            if focus is not None and i not in focus and j not in focus:
                continue
            if a.get(swapped) == b.get(swapped) or a.get(kept) == b.get(kept):
                continue
            negative = [replace(a, **{swapped: b.get(swapped)}), replace(b, **{swapped: a.get(swapped)})]
            if any((obj.get(swapped), obj.get(kept)) in present for obj in negative):
                continue
            if set(pair) == {"color", "shape"} and any((obj.color, obj.shape) in forbidden for obj in negative):
                continue
            candidates.append(((a, b), negative))
    if not candidates:
        return None
    positive, negative = candidates[int(rng.integers(len(candidates)))]
    order = rng.permutation(2)
    template = int(rng.integers(len(CAPTION_TEMPLATES)))

    def caption(objects: Sequence[ShapeObject]) -> str:
        return fill_template(template, [object_phrase(objects[k], pair) for k in order])

    return Probe(
        kind=binding_probe_name(pair),
        caption=caption(positive),
        negative_caption=caption(negative),
        change={"attribute": swapped, "bound_to": kept},
    )
