"""Scenes of the shapes world: seeded sampling of objects and positions, and drawing them with PIL."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import asdict, dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from .vocabulary import ATTRIBUTES, BACKGROUNDS, GRID_SIZES, PALETTE, SIZES, WorldConfig

# Pattern geometry in output pixels (independent of the object size, so a pattern reads the same on any object).
STRIPE_PERIOD = 4.0
DOT_PERIOD = 4.0
DOT_DIAMETER = 2.0
OUTLINE_WIDTH = 2.0
# Stripes and dots are a darker shade of the object colour, so the colour still dominates the object.
PATTERN_SHADE = 0.35
MAX_PLACEMENT_TRIES = 200


@dataclass(frozen=True)
class ShapeObject:
    """One object of a scene: its attributes and its bounding square (`x`, `y`: top-left corner, `side`) in pixels."""

    shape: str
    color: str
    size: str
    pattern: str
    x: int = 0
    y: int = 0
    side: int = 0

    @property
    def key(self) -> tuple[str, str, str, str]:
        """The attributes alone (what a caption says about the object)."""
        return (self.shape, self.color, self.size, self.pattern)

    def get(self, attribute: str) -> str:
        return getattr(self, attribute)


@dataclass(frozen=True)
class Scene:
    """A background colour and 1 or more non-overlapping objects."""

    objects: tuple[ShapeObject, ...]
    background: str

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [asdict(obj) for obj in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> Scene:
        return cls(objects=tuple(ShapeObject(**obj) for obj in data["objects"]), background=data["background"])

    def keys(self) -> list[tuple[str, str, str, str]]:
        """Sorted attribute tuples: two scenes with equal keys are described by the same captions."""
        return sorted(obj.key for obj in self.objects)

    def drawing_key(self) -> tuple:
        """Everything that decides the pixels (background, attributes and boxes): equal keys, equal images."""
        return (self.background, tuple(sorted((*obj.key, obj.x, obj.y, obj.side) for obj in self.objects)))


def scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """An independent generator per (seed, stream, index): scene `index` does not depend on the scenes before it (a
    part can be regenerated or extended piecewise), and another stream never reproduces a training scene."""
    return np.random.default_rng([seed, stream, index])


def unseen_combinations(world: WorldConfig, seed: int) -> frozenset[tuple[str, str]]:
    """The (colour, shape) combinations held out of training: no colour and no shape is used twice, so every colour
    and every shape is still seen with the others."""
    if world.unseen_pairs == 0:
        return frozenset()
    rng = np.random.default_rng([seed, 999])
    colors = rng.permutation(world.colors)[: world.unseen_pairs]
    shapes = rng.permutation(world.shapes)[: world.unseen_pairs]
    return frozenset((str(color), str(shape)) for color, shape in zip(colors, shapes))


def _choice(rng: np.random.Generator, values: list[str]) -> str:
    return values[int(rng.integers(len(values)))]


def sample_object(
    rng: np.random.Generator,
    world: WorldConfig,
    forbidden: Collection[tuple[str, str]] = (),
    fixed: dict[str, str] | None = None,
) -> ShapeObject:
    """Sample the attributes of one object (not yet placed).

    Args:
        forbidden: (colour, shape) pairs to avoid; a pair fixed in full by `fixed` is used even if forbidden.
        fixed: attribute values to use as given, e.g. `{"shape": "star"}`.
    """
    fixed = fixed or {}
    if fixed.keys() >= {"color", "shape"}:
        forbidden = ()
    elif "color" in fixed and all((fixed["color"], shape) in forbidden for shape in world.shapes):
        raise ValueError(f"Every shape is forbidden with {fixed}.")
    elif "shape" in fixed and all((color, fixed["shape"]) in forbidden for color in world.colors):
        raise ValueError(f"Every colour is forbidden with {fixed}.")
    while True:
        values = {name: fixed.get(name) or _choice(rng, world.values(name)) for name in ("shape", *ATTRIBUTES)}
        if (values["color"], values["shape"]) not in forbidden:
            return ShapeObject(**values)


def place_objects(
    rng: np.random.Generator, world: WorldConfig, objects: list[ShapeObject]
) -> list[ShapeObject] | None:
    """Give every object a bounding square inside the image, at least 1 pixel apart from the others (2 on the grid);
    None if they do not fit.

    Grid placement: an object of `GRID_SIZES[size]` cells fills a block of whole cells less a 1-pixel margin, at a
    random free block; free placement: any pixel position, side uniform in the `SIZES` range.
    """
    size = world.image_size
    if world.placement == "grid":
        cell = world.cell_size
        blocks = [GRID_SIZES[obj.size] for obj in objects]
        sides = [block * cell - 2 for block in blocks]
    else:
        sides = [round(float(rng.uniform(*SIZES[obj.size])) * size) for obj in objects]
    placed: dict[int, ShapeObject] = {}
    # Largest first: the small ones fit in the gaps.
    for index in sorted(range(len(objects)), key=lambda i: -sides[i]):
        obj, side = objects[index], sides[index]
        for _ in range(MAX_PLACEMENT_TRIES):
            if world.placement == "grid":
                x, y = (int(v) * cell + 1 for v in rng.integers(0, size // cell - blocks[index] + 1, size=2))
            else:
                x, y = (int(v) for v in rng.integers(1, size - side, size=2))
            if all(
                x + side + 1 <= o.x or o.x + o.side + 1 <= x or y + side + 1 <= o.y or o.y + o.side + 1 <= y
                for o in placed.values()
            ):
                placed[index] = replace(obj, x=x, y=y, side=side)
                break
        else:
            return None
    return [placed[index] for index in range(len(objects))]


def sample_scene(
    rng: np.random.Generator,
    world: WorldConfig,
    num_objects: int | None = None,
    forbidden: Collection[tuple[str, str]] = (),
    first: dict[str, str] | None = None,
) -> Scene:
    """Sample a scene: `num_objects` (default: uniform in [min_objects, max_objects]) objects with pairwise different
    attributes, placed without overlap, on a random background.

    Args:
        forbidden: (colour, shape) pairs that no object may have (held-out combinations).
        first: attribute values of the first object (a fully given colour and shape is used even if forbidden).
    """
    if num_objects is None:
        num_objects = int(rng.integers(world.min_objects, world.max_objects + 1))
    background = _choice(rng, world.backgrounds)
    for _ in range(MAX_PLACEMENT_TRIES):
        objects = [sample_object(rng, world, forbidden, fixed=first)] if first else []
        while len(objects) < num_objects:
            candidate = sample_object(rng, world, forbidden)
            if candidate.key not in {obj.key for obj in objects}:
                objects.append(candidate)
        placed = place_objects(rng, world, objects)
        if placed is not None:
            return Scene(objects=tuple(placed), background=background)
    raise RuntimeError(f"{num_objects} objects do not fit on {world.image_size} pixels; lower max_objects.")


def _shape_outline(shape: str, side: float) -> list[tuple[float, float]] | None:
    """Polygon vertices of `shape` in a `side` x `side` box (None for the circle, drawn as an ellipse)."""
    s = side
    if shape == "circle":
        return None
    if shape == "square":
        m = 0.1 * s  # inset: a full-box square would look much bigger than a circle of the same size
        return [(m, m), (s - m, m), (s - m, s - m), (m, s - m)]
    if shape == "triangle":
        return [(s / 2, 0.04 * s), (s * 0.98, s * 0.92), (s * 0.02, s * 0.92)]
    if shape == "diamond":
        return [(s / 2, 0), (s, s / 2), (s / 2, s), (0, s / 2)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = s / 2 if k % 2 == 0 else s * 0.21
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((s / 2 + radius * math.cos(angle), s / 2 + 0.06 * s + radius * math.sin(angle)))
        return points
    if shape == "heart":
        # The classic parametric heart, x in [-16, 16], y in [-17, 12] (y up), fitted to the box.
        points = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            hx = 16 * math.sin(t) ** 3
            hy = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            points.append((s / 2 + hx * s / 32, (12.5 - hy) * s / 30))
        return points
    raise ValueError(f"Unknown shape {shape!r}.")


def _object_mask(shape: str, side: int, hollow: bool, width: int) -> Image.Image:
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    outline = _shape_outline(shape, side - 1)
    kwargs = {"outline": 255, "width": width} if hollow else {"fill": 255}
    if outline is None:
        draw.ellipse((0, 0, side - 1, side - 1), **kwargs)
    else:
        draw.polygon(outline, **kwargs)
    return mask


def _object_fill(color: tuple[int, int, int], pattern: str, side: int, scale: int, offset: tuple[int, int]):
    fill = Image.new("RGB", (side, side), color)
    if pattern not in ("stripy", "dotted"):
        return fill
    dark = tuple(int(c * PATTERN_SHADE) for c in color)
    draw = ImageDraw.Draw(fill)
    # Anchor the pattern to the image grid (not the object corner), so it does not alias differently per object.
    ox, oy = offset
    if pattern == "stripy":
        period = STRIPE_PERIOD * scale
        start = -((ox + oy) % period) - period
        k = start
        while k < 2 * side + period:
            # Diagonal band of half a period between the lines x + y = k and x + y = k + period / 2.
            h = period / 2
            draw.polygon([(k, 0), (k + h, 0), (k + h - side, side), (k - side, side)], fill=dark)
            k += period
    else:
        period, radius = DOT_PERIOD * scale, DOT_DIAMETER * scale / 2
        for gy in np.arange(-(oy % period), side + period, period):
            for gx in np.arange(-(ox % period), side + period, period):
                cx, cy = gx + period / 2, gy + period / 2
                draw.ellipse((cx - radius, cy - radius, cx + radius - 1, cy + radius - 1), fill=dark)
    return fill


def render_scene(scene: Scene, world: WorldConfig) -> Image.Image:
    """Draw `scene` as an RGB image of `world.image_size` pixels (drawn at `world.supersample` times the size and
    averaged down, so small shapes keep clean edges). Pure function of its inputs: same scene, same pixels."""
    k = world.supersample
    canvas = Image.new("RGB", (world.image_size * k, world.image_size * k), BACKGROUNDS[scene.background])
    for obj in scene.objects:
        side = obj.side * k
        mask = _object_mask(obj.shape, side, obj.pattern == "hollow", round(OUTLINE_WIDTH * k))
        fill = _object_fill(PALETTE[obj.color], obj.pattern, side, k, (obj.x * k, obj.y * k))
        canvas.paste(fill, (obj.x * k, obj.y * k), mask)
    return canvas.resize((world.image_size, world.image_size), Image.Resampling.BOX) if k > 1 else canvas
