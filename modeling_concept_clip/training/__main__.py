"""`concept-clip-train` and `python -m modeling_concept_clip.training` (see `modeling_concept_clip.training`)."""

from . import command_line as main

if __name__ == "__main__":
    raise SystemExit(main())
