"""Reading benchmark files: JSON/JSONL records, image references and the errors that name file and record."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class EvaluationDataError(ValueError):
    """A benchmark file, record or image that is missing or does not follow the benchmark's published format.

    The message always names the file and, where there is one, the record.
    """


def where(path: str | Path, record: Any = None) -> str:
    """`"path"` or `"path, record 'id'"`: the prefix of every data error."""
    return f"{path}" if record is None else f"{path}, record {record!r}"


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing file or a syntax error raises `EvaluationDataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationDataError(f"{path}: file not found")
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise EvaluationDataError(
            f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except UnicodeDecodeError as error:
        raise EvaluationDataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def read_jsonl(path: str | Path) -> list[tuple[int, Any]]:
    """Parse a JSON-lines file into `(line_number, value)` pairs, skipping blank lines."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationDataError(f"{path}: file not found")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append((line_number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise EvaluationDataError(f"{path}, line {line_number}: invalid JSON: {error.msg}") from None
    return rows


def require_fields(record: Any, fields: Mapping[str, type | tuple[type, ...]], context: str) -> None:
    """Check that `record` is a JSON object holding every field of `fields` with the given type(s)."""
    if not isinstance(record, dict):
        raise EvaluationDataError(f"{context}: expected a JSON object, got {type(record).__name__}")
    for name, expected in fields.items():
        if name not in record:
            raise EvaluationDataError(f"{context}: field {name!r} is missing")
        value = record[name]
        # bool is an int subclass; a bounding box of `true` is still malformed.
        if not isinstance(value, expected) or (isinstance(value, bool) and bool not in _as_tuple(expected)):
            raise EvaluationDataError(
                f"{context}: field {name!r} should be {_type_names(expected)}, got {type(value).__name__} {value!r}"
            )


def require_text(record: dict, name: str, context: str) -> str:
    """A non-empty string field (captions)."""
    require_fields(record, {name: str}, context)
    if not record[name].strip():
        raise EvaluationDataError(f"{context}: field {name!r} is empty")
    return record[name]


def _as_tuple(expected: type | tuple[type, ...]) -> tuple[type, ...]:
    return expected if isinstance(expected, tuple) else (expected,)


def _type_names(expected: type | tuple[type, ...]) -> str:
    return " or ".join(t.__name__ for t in _as_tuple(expected))


def records_with_ids(data: Any, path: str | Path) -> list[tuple[Any, Any]]:
    """`(id, record)` pairs of a file that is either `{"<id>": record, ...}` or `[record, ...]`.

    List records use their own `"id"` field when present, else their position.
    """
    if isinstance(data, dict):
        return list(data.items())
    if isinstance(data, list):
        return [(r.get("id", i) if isinstance(r, dict) else i, r) for i, r in enumerate(data)]
    raise EvaluationDataError(f"{path}: expected a JSON object or list of records, got {type(data).__name__}")


def file_digest(path: str | Path) -> str:
    """`"sha256:<first 16 hex digits>"` of a file: identifies the benchmark data version in results."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def files_version(paths: Iterable[str | Path]) -> dict[str, str]:
    """`{file name: digest}` of the annotation files a benchmark read."""
    return {Path(p).name: file_digest(p) for p in paths}


@dataclass(frozen=True)
class ImageRef:
    """One benchmark image: where to read it, an optional crop, and the record that asked for it.

    `key` identifies the image in the embedding cache, so the same file (and crop) is embedded once.
    `loader` replaces `path` for images that live inside a `datasets` table.
    """

    key: str
    origin: str
    path: Path | None = None
    box: tuple[float, float, float, float] | None = None  # (left, upper, right, lower) in pixels
    loader: Callable[[], Image.Image] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_file(cls, path: Path, origin: str, box: Sequence[float] | None = None) -> ImageRef:
        box = tuple(float(v) for v in box) if box is not None else None
        key = str(path) if box is None else f"{path}#crop={box}"
        return cls(key=key, origin=origin, path=path, box=box)

    def load(self) -> Image.Image:
        """The RGB image (cropped when `box` is set); errors name the file and the record."""
        source = self.path if self.path is not None else self.key
        try:
            if self.loader is not None:
                image = self.loader()
            else:
                with Image.open(self.path) as opened:
                    image = opened.convert("RGB")
            image = image.convert("RGB")
        except FileNotFoundError:
            raise EvaluationDataError(f"{self.origin}: image file not found: {source}") from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
            raise EvaluationDataError(f"{self.origin}: cannot read image {source}: {error}") from None
        if self.box is not None:
            left, upper, right, lower = self.box
            if not (right > left and lower > upper):
                raise EvaluationDataError(f"{self.origin}: empty crop box {self.box} for image {source}")
            image = image.crop(self.box)
        return image


def find_image(relative: str, roots: Sequence[Path], origin: str, box: Sequence[float] | None = None) -> ImageRef:
    """Resolve `relative` against the first root that holds it; the error lists every place looked at."""
    for root in roots:
        candidate = root / relative
        if candidate.is_file():
            return ImageRef.from_file(candidate, origin, box)
    tried = ", ".join(str(root / relative) for root in roots)
    raise EvaluationDataError(f"{origin}: image file not found (looked for {tried})")
