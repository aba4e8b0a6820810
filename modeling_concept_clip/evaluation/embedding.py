"""Embedding benchmark images and texts in batches, once each: the only place that runs the model.

Every benchmark asks an `Embedder` for L2-normalised embeddings of `ImageRef`s and strings, and scores with
cosine similarities. For SigLIP the model's own score is `exp(logit_scale) * cos + logit_bias`, an increasing
function of the cosine, so every ranking and comparison is the same as with the logits.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import ImageRef

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingConfig:
    """How the embedding loop batches and reads inputs (the model's own device and dtype are used)."""

    image_batch_size: int = field(default=64, metadata={"help": "Images per forward pass."})
    text_batch_size: int = field(default=256, metadata={"help": "Texts per forward pass."})
    num_workers: int = field(
        default=4, metadata={"help": "Threads that decode and preprocess the next batch of images (0: none)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar per embedding loop."})
    text_max_length: int | None = field(
        default=None,
        metadata={"help": "Token limit of texts (longer ones are truncated); default: the text tower's limit."},
    )

    def __post_init__(self):
        if self.image_batch_size < 1 or self.text_batch_size < 1:
            raise ValueError("Batch sizes must be at least 1.")
        if self.num_workers < 0:
            raise ValueError("num_workers must be >= 0.")


class Embedder(ABC):
    """Cached, deduplicated embeddings of benchmark images and texts in the joint space.

    Subclasses implement `iter_image_embeddings` / `iter_text_embeddings`; this class removes duplicates
    (an image is identified by `ImageRef.key`, a text by its exact string), keeps every embedding it computed
    until `clear_cache()`, and returns float32 CPU tensors with unit rows.
    """

    def __init__(self, progress: bool = True):
        self.progress = progress
        self._image_cache: dict[str, torch.Tensor] = {}
        self._text_cache: dict[str, torch.Tensor] = {}
        self.num_images_encoded = 0
        self.num_texts_encoded = 0

    @abstractmethod
    def iter_image_embeddings(self, refs: Sequence[ImageRef]) -> Iterator[torch.Tensor]:
        """Yield embeddings of `refs` in order, in chunks of shape `(batch, dim)` (any normalisation)."""

    @abstractmethod
    def iter_text_embeddings(self, texts: Sequence[str]) -> Iterator[torch.Tensor]:
        """Yield embeddings of `texts` in order, in chunks of shape `(batch, dim)` (any normalisation)."""

    def embed_images(self, refs: Sequence[ImageRef], desc: str = "images") -> torch.Tensor:
        """Unit embeddings of `refs`, shape `(len(refs), dim)`; each distinct key is encoded once."""
        missing = list({ref.key: ref for ref in refs if ref.key not in self._image_cache}.values())
        self._fill(self._image_cache, [r.key for r in missing], self.iter_image_embeddings(missing), desc)
        self.num_images_encoded += len(missing)
        return self._gather(self._image_cache, [ref.key for ref in refs])

    def embed_texts(self, texts: Sequence[str], desc: str = "texts") -> torch.Tensor:
        """Unit embeddings of `texts`, shape `(len(texts), dim)`; each distinct string is encoded once."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        # Longest first, so that batches padded to their longest text pad little; the cache makes order free.
        missing.sort(key=len, reverse=True)
        self._fill(self._text_cache, missing, self.iter_text_embeddings(missing), desc)
        self.num_texts_encoded += len(missing)
        return self._gather(self._text_cache, list(texts))

    def clear_cache(self) -> None:
        self._image_cache.clear()
        self._text_cache.clear()

    def _fill(self, cache: dict, keys: list, chunks: Iterator[torch.Tensor], desc: str) -> None:
        if not keys:
            return
        position = 0
        with tqdm(total=len(keys), desc=desc, unit=desc.split()[-1], disable=not self.progress) as bar:
            for chunk in chunks:
                chunk = F.normalize(chunk.detach().float().cpu(), dim=-1)
                for row in chunk:
                    cache[keys[position]] = row
                    position += 1
                bar.update(len(chunk))
        if position != len(keys):
            raise RuntimeError(f"The embedder returned {position} embeddings for {len(keys)} inputs.")

    @staticmethod
    def _gather(cache: dict, keys: list) -> torch.Tensor:
        if not keys:
            return torch.empty(0, 0)
        return torch.stack([cache[key] for key in keys])


class ModelEmbedder(Embedder):
    """Embeds with a `CLIPModel` or `SiglipModel` (or any model with `get_image_features`/`get_text_features`)
    and its processor, on the model's current device and dtype, without moving or changing the model.

    Texts are tokenised as training (`ConceptCollator`) and `transformers`' zero-shot pipeline tokenise them: CLIP
    pads to the longest text of the batch, SigLIP to `max_length` (64 for the released models) because its text
    tower pools the last position; the model gets whatever the tokenizer returns (its attention mask included).
    """

    def __init__(self, model: torch.nn.Module, processor, config: EmbeddingConfig | None = None):
        config = config or EmbeddingConfig()
        super().__init__(progress=config.progress)
        self.model = model
        self.config = config
        self.tokenizer = processor.tokenizer
        self.image_processor = processor.image_processor
        self.is_siglip = "siglip" in getattr(model.config, "model_type", "")
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        limits = [getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)]
        if self.tokenizer.model_max_length and self.tokenizer.model_max_length < 1_000_000:
            limits.append(self.tokenizer.model_max_length)
        self.text_max_length = config.text_max_length or min(limit for limit in limits if limit)

    def settings(self) -> dict:
        """What changes the embeddings beyond the weights: recorded in results."""
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "text_max_length": self.text_max_length,
            "text_padding": "max_length" if self.is_siglip else "longest",
            "image_batch_size": self.config.image_batch_size,
            "text_batch_size": self.config.text_batch_size,
        }

    def _pixel_values(self, ref: ImageRef) -> torch.Tensor:
        """`(1, 3, H, W)` preprocessed pixels of one image (runs in a worker thread)."""
        return self.image_processor(images=ref.load(), return_tensors="pt")["pixel_values"]

    def _pixel_batches(self, refs: Sequence[ImageRef]) -> Iterator[torch.Tensor]:
        """`(batch, 3, H, W)` pixel batches; worker threads prepare batch k+1 while the model runs batch k."""
        size = self.config.image_batch_size
        batches = [refs[start : start + size] for start in range(0, len(refs), size)]
        if self.config.num_workers == 0:
            for batch in batches:
                yield torch.cat([self._pixel_values(ref) for ref in batch])
            return
        with ThreadPoolExecutor(max_workers=self.config.num_workers) as pool:

            def submit(batch: Sequence[ImageRef]) -> list[Future]:
                return [pool.submit(self._pixel_values, ref) for ref in batch]

            pending = submit(batches[0]) if batches else []
            for index in range(len(batches)):
                current = pending
                pending = submit(batches[index + 1]) if index + 1 < len(batches) else []
                try:
                    yield torch.cat([future.result() for future in current])
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise

    def iter_image_embeddings(self, refs: Sequence[ImageRef]) -> Iterator[torch.Tensor]:
        for pixel_values in self._pixel_batches(refs):
            with torch.inference_mode():
                output = self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))
            yield _pooled(output)

    def iter_text_embeddings(self, texts: Sequence[str]) -> Iterator[torch.Tensor]:
        size = self.config.text_batch_size
        for start in range(0, len(texts), size):
            inputs = self.tokenizer(
                list(texts[start : start + size]),
                padding="max_length" if self.is_siglip else True,
                truncation=True,
                max_length=self.text_max_length,
                return_tensors="pt",
            )
            kwargs = {key: inputs[key].to(self.device) for key in ("input_ids", "attention_mask") if key in inputs}
            with torch.inference_mode():
                yield _pooled(self.model.get_text_features(**kwargs))


def _pooled(output) -> torch.Tensor:
    """The projected embedding: `transformers` 5 returns an output object whose `pooler_output` holds it."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output
