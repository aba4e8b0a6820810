"""`python -m modeling_concept_clip.evaluation ...` runs the `concept-clip-eval` command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
