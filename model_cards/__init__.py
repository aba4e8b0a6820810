"""Model cards of C2LIP checkpoints: the template and the code that fills it (`modeling_concept_clip.model_cards`)."""

from .card import (
    CARD_FILE,
    RESULTS_FILE,
    TEMPLATE_PATH,
    TRAINING_ARGS_FILE,
    ModelCardOptions,
    build_model_card,
    eval_results_from_run,
    evaluation_table,
    load_results,
    load_training_args,
    select_run,
    write_model_card,
)

__all__ = [
    "CARD_FILE",
    "RESULTS_FILE",
    "TEMPLATE_PATH",
    "TRAINING_ARGS_FILE",
    "ModelCardOptions",
    "build_model_card",
    "eval_results_from_run",
    "evaluation_table",
    "load_results",
    "load_training_args",
    "select_run",
    "write_model_card",
]
