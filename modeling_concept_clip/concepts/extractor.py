"""[`ConceptExtractor`]: the rules over many captions, in-process or in a pool of worker processes."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import sys
import types
import weakref
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Literal

from .config import ConceptExtractorConfig
from .normalization import check_caption, clean_caption
from .pipeline import FastPosMapper, load_spacy_pipeline, resolve_spacy_model
from .rules import concepts_from_doc

if TYPE_CHECKING:
    from spacy.language import Language
    from spacy.tokens import Doc

logger = logging.getLogger(__name__)

_WORKER_EXTRACTOR: ConceptExtractor | None = None


def _worker_init(config: ConceptExtractorConfig) -> None:
    global _WORKER_EXTRACTOR
    _WORKER_EXTRACTOR = ConceptExtractor(replace(config, n_process=1))


def _worker_extract(texts: list[str]) -> list[list[str]]:
    # Plain strings travel back to the parent, never Docs.
    assert _WORKER_EXTRACTOR is not None
    return _WORKER_EXTRACTOR._extract_clean(texts)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _close_pool(pool: ProcessPoolExecutor) -> None:
    pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _main_module_hidden(start_method: str) -> Iterator[None]:
    """Start processes that do not import the parent's `__main__`.

    `spawn` and `forkserver` import `__main__` in every new process so that functions defined there unpickle.
    The workers need nothing from it (their initializer and tasks live in this package), and in a script that
    calls the extractor at module level, without an `if __name__ == "__main__":` guard, the import would run the
    extraction again in each worker, which Python refuses (the pool breaks). `ProcessPoolExecutor` starts its
    processes in `submit`, so submitting under this context keeps `__main__` out of them.
    """
    if start_method == "fork":
        yield
        return
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


class ConceptExtractor:
    """Extract concept-centric noun phrases from captions (the rules: `modeling_concept_clip.concepts`).

    Example:

    ```python
    >>> from modeling_concept_clip import ConceptExtractor

    >>> extractor = ConceptExtractor()
    >>> extractor.extract(["a red couch next to a blue lamp"])
    [['a red couch', 'a blue lamp']]
    ```

    The spaCy pipeline is loaded on first use. With `n_process > 1` a pool of worker processes, each with its
    own pipeline, is started on the first large call and reused until [`~ConceptExtractor.close`] (or the end of a `with`
    block).
    """

    def __init__(self, config: ConceptExtractorConfig | None = None, nlp: Language | None = None) -> None:
        self.config = config if config is not None else ConceptExtractorConfig()
        self._nlp = nlp
        self._pos_mapper: FastPosMapper | None = None
        self._pool: Any = None
        self._pool_finalizer: Any = None
        self._captions_seen = 0  # distinct captions of all calls so far

    @property
    def nlp(self) -> Language:
        """The spaCy pipeline (loaded on first access)."""
        if self._nlp is None:
            self._nlp, self._pos_mapper = load_spacy_pipeline(self.config)
        return self._nlp

    @property
    def n_process(self) -> int:
        """Worker processes used for large inputs (1: in-process)."""
        if self.config.n_process is not None:
            return self.config.n_process
        return max(1, min(_available_cpus(), 8))

    def concepts_from_doc(self, doc: Doc) -> list[str]:
        """The concepts of a caption already parsed by a pipeline with a tagger and (mode "parser") a parser."""
        return concepts_from_doc(doc, self.config)

    def extract_one(self, caption: str) -> list[str]:
        """The concepts of one caption."""
        return self.extract([caption])[0]

    def extract(self, captions: Iterable[Any], *, on_invalid: Literal["raise", "empty"] = "raise") -> list[list[str]]:
        """The concepts of every caption, in input order.

        Args:
            captions: the captions.
            on_invalid: what an invalid caption (`None`, not a string, empty or longer than
                `config.max_caption_chars`, see [`check_caption`]) does: `"raise"` a `ValueError`, or
                get an `"empty"` concept list.
        """
        if on_invalid not in ("raise", "empty"):
            raise ValueError(f"`on_invalid` must be 'raise' or 'empty', got {on_invalid!r}.")
        if isinstance(captions, str):
            raise ValueError("`captions` must be a sequence of captions, not a single string: use `extract_one`.")
        captions = list(captions)
        keys: list[str | None] = []
        for index, caption in enumerate(captions):
            problem = check_caption(caption, self.config.max_caption_chars)
            if problem is not None and on_invalid == "raise":
                raise ValueError(f"Caption {index} is invalid ({problem}): {str(caption)[:80]!r}")
            keys.append(None if problem is not None else clean_caption(caption))
        # Repeated captions (common in web data) are parsed once.
        unique = list(dict.fromkeys(key for key in keys if key is not None))
        by_text = dict(zip(unique, self._extract_unique(unique)))
        return [list(by_text[key]) if key is not None else [] for key in keys]

    def _extract_unique(self, texts: list[str]) -> list[list[str]]:
        n_process = self.n_process
        self._captions_seen += len(texts)
        threshold = n_process * self.config.min_captions_per_process
        # A long run fed in pieces (one shard per call) pays the workers' start-up once: once enough captions have
        # come, any call that gives each worker a batch uses them.
        long_run = self._captions_seen >= threshold and len(texts) >= n_process * self.config.batch_size
        if n_process > 1 and (len(texts) >= threshold or long_run):
            return self._extract_parallel(texts, n_process)
        return self._extract_clean(texts)

    def _extract_clean(self, texts: Sequence[str]) -> list[list[str]]:
        """Concepts of cleaned, valid captions, in this process."""
        docs = self.nlp.pipe(texts, batch_size=self.config.batch_size)
        if self._pos_mapper is not None:
            docs = map(self._pos_mapper, docs)
        return [self.concepts_from_doc(doc) for doc in docs]

    def _extract_parallel(self, texts: list[str], n_process: int) -> list[list[str]]:
        pool = self._get_pool(n_process)
        # Pieces small enough to balance the workers, large enough to amortise the inter-process round trip.
        piece = max(self.config.batch_size, min(4096, len(texts) // (4 * n_process) + 1))
        pieces = [texts[i : i + piece] for i in range(0, len(texts), piece)]
        with _main_module_hidden(self.config.start_method):
            futures = [pool.submit(_worker_extract, part) for part in pieces]
        return [concepts for future in futures for concepts in future.result()]

    def _get_pool(self, n_process: int) -> Any:
        if self._pool is None:
            # Resolve here so a missing model fails in the parent with the install hint, not in a worker.
            resolve_spacy_model(self.config.spacy_model)
            # An executor, not multiprocessing.Pool: a worker that dies (e.g. the pipeline fails to load) raises
            # BrokenProcessPool here instead of being respawned forever.
            self._pool = ProcessPoolExecutor(
                max_workers=n_process,
                mp_context=multiprocessing.get_context(self.config.start_method),
                initializer=_worker_init,
                initargs=(self.config,),
            )
            self._pool_finalizer = weakref.finalize(self, _close_pool, self._pool)
            logger.info("Started %d concept extraction workers (%s)", n_process, self.config.start_method)
        return self._pool

    def close(self) -> None:
        """Stop the worker processes, if any were started."""
        if self._pool_finalizer is not None:
            self._pool_finalizer()
        self._pool = None
        self._pool_finalizer = None

    def __enter__(self) -> ConceptExtractor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        # Pickle only the settings: the pipeline and the pool are rebuilt where the object lands.
        return {"config": self.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["config"])


def extract_concepts(captions: Iterable[str], config: ConceptExtractorConfig | None = None) -> list[list[str]]:
    """One-shot [`ConceptExtractor.extract`] (loads the pipeline each call: prefer an extractor for loops)."""
    with ConceptExtractor(config) as extractor:
        return extractor.extract(captions)
