"""`datasets` integration: [`add_concepts_column`] adds a cached `concepts` column with a batched `map`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from .config import EXTRACTION_RULES_VERSION, ConceptExtractorConfig
from .extractor import ConceptExtractor
from .pipeline import spacy_model_fingerprint

if TYPE_CHECKING:
    from datasets import Dataset

# One extractor per config and process: the map function itself must stay free of the pipeline so that
# `datasets` hashes it to the same fingerprint in every run.
_EXTRACTORS: dict[ConceptExtractorConfig, ConceptExtractor] = {}


def _cached_extractor(config: ConceptExtractorConfig) -> ConceptExtractor:
    extractor = _EXTRACTORS.get(config)
    if extractor is None:
        extractor = _EXTRACTORS[config] = ConceptExtractor(config)
    return extractor


@dataclass(frozen=True)
class ConceptColumnFunction:
    """The batched `datasets.map` function of [`add_concepts_column`].

    It holds only plain, hashable data (the settings, the column names, the rules and model versions), so
    `datasets` computes the same fingerprint for it in every process and run, and a repeated call hits the
    cache. Invalid captions get an empty list.
    """

    config: ConceptExtractorConfig
    caption_column: str
    output_column: str
    model_fingerprint: str
    rules_version: str = EXTRACTION_RULES_VERSION

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[list[str]]]:
        concepts = _cached_extractor(self.config).extract(batch[self.caption_column], on_invalid="empty")
        return {self.output_column: concepts}


def add_concepts_column(
    dataset: Dataset,
    config: ConceptExtractorConfig | None = None,
    *,
    caption_column: str = "caption",
    output_column: str = "concepts",
    batch_size: int = 1000,
    num_proc: int | None = None,
    load_from_cache_file: bool | None = None,
    desc: str | None = "Extracting concepts",
) -> Dataset:
    """Return `dataset` with a `concepts` column (a list of strings per row) added via a batched `map`.

    The result is cached by the dataset fingerprint like any `datasets` map: a second call on the same data
    with the same settings, spaCy pipeline version and rules version loads the cache file and extracts nothing.
    (`datasets` only caches datasets backed by files, e.g. from `load_dataset`/`load_from_disk`.)

    Args:
        dataset: a `datasets.Dataset`.
        config: extractor settings (defaults when `None`).
        caption_column: the column holding the captions.
        output_column: name of the new column; an existing column of that name is replaced.
        batch_size: rows per `map` batch.
        num_proc: `map` worker processes; each loads its own pipeline and extracts in-process. With `None`,
            one process, which may still use the extractor's own workers (`config.n_process`) on large batches.
        load_from_cache_file: passed to `map` (`None`: the `datasets` default, i.e. use the cache).
        desc: progress bar label.

    Invalid captions (missing, not a string, empty, too long) get an empty concept list; they never fail the map.
    """
    config = config if config is not None else ConceptExtractorConfig()
    if caption_column not in dataset.column_names:
        raise ValueError(f"Column {caption_column!r} not in the dataset (columns: {dataset.column_names}).")
    if num_proc is not None and num_proc < 1:
        raise ValueError(f"`num_proc` must be >= 1 or None, got {num_proc}.")
    if num_proc is not None and num_proc > 1:
        # `map` workers are daemonic and cannot start their own pools.
        config = replace(config, n_process=1)
    function = ConceptColumnFunction(
        config=config,
        caption_column=caption_column,
        output_column=output_column,
        model_fingerprint=spacy_model_fingerprint(config.spacy_model),
    )
    remove = [output_column] if output_column in dataset.column_names and output_column != caption_column else None
    return dataset.map(
        function,
        batched=True,
        batch_size=batch_size,
        num_proc=num_proc,
        remove_columns=remove,
        load_from_cache_file=load_from_cache_file,
        desc=desc,
    )
