"""`concept-clip-train` and `python -m modeling_concept_clip.training` (see `modeling_concept_clip.training`)."""

from . import main as train


def main() -> int:
    train()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
