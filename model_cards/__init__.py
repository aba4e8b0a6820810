"""Model cards of C2LIP checkpoints: the template and the code that gathers its data (`modeling_concept_clip.model_cards`)."""

from .card import (
    CARD_FILE,
    RESULTS_FILE,
    TEMPLATE_PATH,
    TRAINING_ARGS_FILE,
    C2LIPModelCard,
    ModelCardOptions,
    TrainingRecord,
    build_model_card,
    read_training_record,
    select_run,
    write_model_card,
)

__all__ = [
    "CARD_FILE",
    "RESULTS_FILE",
    "TEMPLATE_PATH",
    "TRAINING_ARGS_FILE",
    "C2LIPModelCard",
    "ModelCardOptions",
    "TrainingRecord",
    "build_model_card",
    "read_training_record",
    "select_run",
    "write_model_card",
]
