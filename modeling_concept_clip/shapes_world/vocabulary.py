"""The closed vocabulary of the shapes world: attribute values, their colours on screen, and the world settings."""

from __future__ import annotations

from dataclasses import dataclass, field

# Attribute types in the order they are spoken: "a big red striped circle".
ATTRIBUTES: tuple[str, ...] = ("size", "color", "pattern")

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "star", "heart")
# Saturated hues chosen to stay apart after 4x downsampling, also under stripes and dots.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (250, 135, 0),
    "yellow": (245, 215, 0),
    "green": (30, 175, 45),
    "blue": (35, 85, 240),
    "purple": (145, 45, 200),
    "pink": (255, 130, 195),
}
# Neutral backgrounds: never an object colour, so "a red ..." can only refer to an object.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"black": (0, 0, 0), "gray": (110, 110, 110), "white": (245, 245, 245)}
# Free placement: side of an object's bounding square, as a fraction of the image side (uniform in the range).
SIZES: dict[str, tuple[float, float]] = {"small": (0.22, 0.26), "big": (0.34, 0.4)}
# Grid placement: side of an object's cell block, in grid cells (the object is drawn 1 pixel inside the block).
GRID_SIZES: dict[str, int] = {"small": 2, "big": 3}
PLACEMENTS: tuple[str, ...] = ("grid", "free")
PATTERNS: tuple[str, ...] = ("solid", "stripy", "dotted", "hollow")


@dataclass
class WorldConfig:
    """What a scene of the shapes world can contain and how it is drawn (everything that changes the data).

    Attribute values must come from the module constants (`SHAPES`, `PALETTE`, `SIZES`, `PATTERNS`, `BACKGROUNDS`);
    listing fewer restricts the world.
    """

    image_size: int = field(default=48, metadata={"help": "Side of the square images in pixels."})
    placement: str = field(
        default="grid",
        metadata={
            "help": "'grid': objects cover whole cells of a `cell_size` grid (the ViT's patches when `cell_size` is "
            "the patch size), so a shape has the same pixels wherever it is; 'free': any position, sides in the "
            "`SIZES` range (a tiny ViT does not learn shape from free placement in a CPU budget)."
        },
    )
    cell_size: int = field(default=8, metadata={"help": "Grid placement: cell side in pixels (the patch size)."})
    min_objects: int = field(default=2, metadata={"help": "Fewest objects in a scene."})
    max_objects: int = field(default=4, metadata={"help": "Most objects in a scene."})
    shapes: list[str] = field(default_factory=lambda: list(SHAPES), metadata={"help": "Shape names."})
    colors: list[str] = field(default_factory=lambda: list(PALETTE), metadata={"help": "Object colour names."})
    sizes: list[str] = field(default_factory=lambda: list(SIZES), metadata={"help": "Size names."})
    patterns: list[str] = field(default_factory=lambda: list(PATTERNS), metadata={"help": "Fill pattern names."})
    backgrounds: list[str] = field(default_factory=lambda: list(BACKGROUNDS), metadata={"help": "Background colours."})
    background_mention_prob: float = field(
        default=0.5, metadata={"help": "Probability that a caption names the background ('on a gray background')."}
    )
    bow_mention_prob: float = field(
        default=0.5,
        metadata={
            "help": "Probability that a bag-of-words caption (`bow_caption`, the prior's training text) names each "
            "attribute type (size, colour, pattern) of its objects; shapes are always named. 1: every word of the "
            "caption."
        },
    )
    bow_mention_per_object: bool = field(
        default=False,
        metadata={
            "help": "Bag-of-words captions: decide for each attribute of each object whether it is named (True), "
            "instead of once per attribute type for the whole caption (False)."
        },
    )
    unseen_pairs: int = field(
        default=4,
        metadata={
            "help": "Number of (colour, shape) combinations held out of training and of the in-distribution probes; "
            "they only appear in the `unseen/` probe folder (systematic generalisation). 0 disables it."
        },
    )
    supersample: int = field(default=4, metadata={"help": "Draw at this multiple of the size, then average down."})

    def __post_init__(self):
        for name, allowed in (
            ("shapes", SHAPES),
            ("colors", PALETTE),
            ("sizes", SIZES),
            ("patterns", PATTERNS),
            ("backgrounds", BACKGROUNDS),
        ):
            values = getattr(self, name)
            unknown = [value for value in values if value not in allowed]
            if unknown or not values or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct values from {list(allowed)}, got {values}.")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"Need 1 <= min_objects <= max_objects, got {self.min_objects}, {self.max_objects}.")
        if self.unseen_pairs > min(len(self.colors), len(self.shapes)) - 1:
            raise ValueError("unseen_pairs must leave every colour and every shape at least one seen combination.")
        if self.image_size < 32:
            raise ValueError("Patterns are not legible below 32 pixels.")
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {self.placement!r}.")
        if self.placement == "grid" and (
            self.image_size % self.cell_size
            or max(GRID_SIZES[size] for size in self.sizes) * self.cell_size > self.image_size
        ):
            raise ValueError(
                f"Grid placement needs image_size ({self.image_size}) to be a multiple of cell_size "
                f"({self.cell_size}) and at least {max(GRID_SIZES.values())} cells."
            )

    def values(self, attribute: str) -> list[str]:
        """The values of `attribute` ("shape", "color", "size" or "pattern") in this world."""
        return {"shape": self.shapes, "color": self.colors, "size": self.sizes, "pattern": self.patterns}[attribute]
