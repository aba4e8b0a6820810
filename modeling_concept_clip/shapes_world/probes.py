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
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from .captions import CaptionSpec, object_phrase
from .scenes import Scene, ShapeObject, sample_object
from .vocabulary import ATTRIBUTES, WorldConfig

PROBE_KINDS: tuple[str, ...] = ("swap_att", "replace_att", "replace_obj", "add_obj")


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
