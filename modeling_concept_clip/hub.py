"""Publish a trained checkpoint folder to the Hugging Face Hub: checks, an explicit allow-list, one commit.

    from modeling_concept_clip.hub import push_checkpoint

    push_checkpoint("outputs/c2lip", repo_id="me/c2lip-siglip-b16", dry_run=True)  # what would be uploaded
    push_checkpoint("outputs/c2lip", repo_id="me/c2lip-siglip-b16")

Only a plain `CLIPModel`/`SiglipModel` checkpoint goes up: safetensors weights (never a pickle), processor files,
the model card (rendered from the folder with `modeling_concept_clip.model_cards`), `training_args.json` and the
evaluation `results.json`, all in a single commit. Nothing in the local folder is written or deleted, so a failed
upload can simply be retried. The token comes from `token=`, `HF_TOKEN` or the `hf auth login` token file; it is
never logged, and a file that contains it is refused.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import struct
from dataclasses import dataclass, field, fields
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, get_token

from .model_cards import CARD_FILE, RESULTS_FILE, TRAINING_ARGS_FILE, ModelCardOptions, build_model_card
from .model_cards.card import PLAIN_ARCHITECTURES

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PROCESSOR_FILES = (
    "processor_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
)
# Everything that may be uploaded, besides weight shards; any other file of the folder stays local.
ALLOWED_FILES = ("config.json", WEIGHTS_FILE, WEIGHTS_INDEX_FILE, *PROCESSOR_FILES, TRAINING_ARGS_FILE, RESULTS_FILE)
SHARD_PATTERN = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# Formats that unpickle (run code) on load: never uploaded, and their presence means the folder is not a clean export.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
# Accelerate/Trainer state: the folder is a training checkpoint, or holds them, rather than an exported model.
TRAINING_STATE_FILES = ("trainer_state.json", "training_state.json")
TRAINING_STATE_DIR_PATTERN = re.compile(r"^(checkpoints|checkpoint-\d+|\.partial-\d+)$")
# Hub user access tokens: refused in any uploaded file, whoever they belong to.
TOKEN_PATTERN = re.compile(rb"hf_[A-Za-z0-9]{30,}")


class CheckpointValidationError(ValueError):
    """The folder is not a plain CLIP/SigLIP checkpoint that may be published (nothing was uploaded)."""


class HubUploadError(RuntimeError):
    """The upload failed; the local folder is unchanged and the message says how to retry."""


@dataclass
class UploadFile:
    """One file of the commit: a local file, or generated text (the card)."""

    path_in_repo: str
    source: Path | None = None
    content: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.content) if self.content is not None else self.source.stat().st_size

    def operation(self) -> CommitOperationAdd:
        payload = self.content if self.content is not None else str(self.source)
        return CommitOperationAdd(path_in_repo=self.path_in_repo, path_or_fileobj=payload)


@dataclass
class UploadPlan:
    """What one push would upload (in one commit) and what it leaves local."""

    folder: Path
    repo_id: str
    model_type: str
    files: list[UploadFile]
    card: str
    card_generated: bool
    not_uploaded: list[str] = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [file.path_in_repo for file in self.files]

    def describe(self) -> str:
        """The file list, as `--dry_run` prints it."""
        width = max(len(path) for path in self.paths)
        lines = [f"{len(self.files)} files from {self.folder} for {self.repo_id}, in one commit:"]
        for file in self.files:
            note = " (generated model card)" if file.path_in_repo == CARD_FILE and self.card_generated else ""
            lines.append(f"  {file.path_in_repo:<{width}}  {_human_size(file.size):>9}{note}")
        if self.not_uploaded:
            lines.append(f"Not uploaded (not on the allow-list): {', '.join(self.not_uploaded)}")
        return "\n".join(lines)


@dataclass
class PushResult:
    """What `push_checkpoint` did (`commit_url` is `None` for a dry run); `summary` is the file list as text."""

    repo_id: str
    files: list[str]
    card: str
    dry_run: bool
    summary: str = ""
    revision: str | None = None
    commit_url: str | None = None
    pr_url: str | None = None


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _check_safetensors(path: Path) -> None:
    """Open the file's header with `safetensors` (a pickle or a truncated file fails here)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as handle:
            handle.keys()
    except Exception as error:  # safetensors raises its own error types for every kind of bad file
        raise CheckpointValidationError(f"{path} is not a valid safetensors file ({error}).") from error


def _safetensors_header(path: Path) -> bytes:
    with open(path, "rb") as handle:
        (length,) = struct.unpack("<Q", handle.read(8))
        return handle.read(length)


def inspect_checkpoint(folder: str | Path, allow_checkpoint_dirs: bool = False) -> tuple[str, list[Path], list[str]]:
    """Check that `folder` is a publishable plain checkpoint.

    Returns:
        `(model_type, files, not_uploaded)`: the allow-listed files to upload (card excluded) and the names of the
        folder's other entries.

    Raises:
        CheckpointValidationError: listing every problem found.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointValidationError(f"{folder} is not a directory.")
    problems: list[str] = []
    entries = sorted(folder.iterdir(), key=lambda p: p.name)

    model_type = ""
    config_path = folder / "config.json"
    if not config_path.is_file():
        problems.append("config.json is missing: this is not a model folder written by save_pretrained.")
    else:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            config = {}
            problems.append(f"config.json is not valid JSON ({error}).")
        if not isinstance(config, dict):
            config = {}
            problems.append("config.json does not hold a JSON object.")
        model_type = config.get("model_type", "")
        expected = PLAIN_ARCHITECTURES.get(model_type)
        if expected is None:
            problems.append(f"config.json has model_type {model_type!r}; only 'clip' and 'siglip' are published.")
        elif config.get("auto_map"):
            problems.append("config.json has an auto_map (custom code): a plain checkpoint needs none.")
        elif config.get("architectures") != [expected]:
            problems.append(
                f"config.json has architectures {config.get('architectures')!r}, expected [{expected!r}]: export "
                "the model with save_pretrained of the Concept* class (it writes a plain checkpoint)."
            )

    pickles = [p.name for p in entries if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES]
    if pickles:
        problems.append(
            f"pickle files found ({', '.join(pickles)}): pickles are never uploaded, and their presence means "
            "this is not a clean safetensors export (training state or a torch.save checkpoint). Publish the "
            "folder that save_pretrained wrote, or remove them."
        )
    state = [p.name for p in entries if p.is_file() and p.name in TRAINING_STATE_FILES]
    if state:
        problems.append(f"training-state files found ({', '.join(state)}): this looks like a training checkpoint.")
    state_dirs = [p.name + "/" for p in entries if p.is_dir() and TRAINING_STATE_DIR_PATTERN.match(p.name)]
    if state_dirs and not allow_checkpoint_dirs:
        problems.append(
            f"training checkpoints found ({', '.join(state_dirs)}). They are never uploaded; pass "
            "allow_checkpoint_dirs=True (--allow_checkpoint_dirs) to publish the exported model beside them."
        )

    weights: list[Path] = []
    index_path = folder / WEIGHTS_INDEX_FILE
    if index_path.is_file():
        try:
            shard_names = sorted(set(json.loads(index_path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (json.JSONDecodeError, KeyError, AttributeError) as error:
            shard_names = []
            problems.append(f"{WEIGHTS_INDEX_FILE} is not a valid index ({error!r}).")
        for name in shard_names:
            if not SHARD_PATTERN.match(name) or not (folder / name).is_file():
                problems.append(f"{WEIGHTS_INDEX_FILE} lists {name!r}, which is not a shard file of the folder.")
            else:
                weights.append(folder / name)
    elif (folder / WEIGHTS_FILE).is_file():
        weights.append(folder / WEIGHTS_FILE)
    else:
        problems.append(f"no safetensors weights ({WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} with its shards).")
    for path in weights:
        try:
            _check_safetensors(path)
        except CheckpointValidationError as error:
            problems.append(str(error))

    if not any((folder / name).is_file() for name in ("processor_config.json", "preprocessor_config.json")):
        problems.append("no image processor (processor_config.json or preprocessor_config.json): save the processor.")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        problems.append("no tokenizer files (tokenizer.json or tokenizer_config.json): save the processor.")

    if problems:
        raise CheckpointValidationError(f"{folder} cannot be published:\n- " + "\n- ".join(problems))

    allowed = {name for name in ALLOWED_FILES if (folder / name).is_file()}
    allowed.update(path.name for path in weights)
    if index_path.is_file():
        allowed.discard(WEIGHTS_FILE)  # a stray unsharded file beside an index would load instead of the shards
    files = [folder / name for name in sorted(allowed)]
    not_uploaded = [p.name + ("/" if p.is_dir() else "") for p in entries if p.name not in allowed]
    return model_type, files, [name for name in not_uploaded if name != CARD_FILE]


def plan_upload(
    folder: str | Path,
    repo_id: str,
    keep_card: bool = False,
    card_options: ModelCardOptions | None = None,
    allow_checkpoint_dirs: bool = False,
) -> UploadPlan:
    """Check the folder and list what a push would upload (no network, nothing written).

    Args:
        folder: checkpoint folder (the `--output_dir` of `training/train.py`).
        repo_id: target repository; its name appears in the card's usage snippets.
        keep_card: upload the folder's own `README.md` as it is instead of rendering the card.
        card_options: metadata for the rendered card (see `ModelCardOptions`).
        allow_checkpoint_dirs: tolerate `checkpoints/` beside the exported model (never uploaded).
    """
    folder = Path(folder)
    model_type, paths, not_uploaded = inspect_checkpoint(folder, allow_checkpoint_dirs=allow_checkpoint_dirs)
    if keep_card:
        if not (folder / CARD_FILE).is_file():
            raise CheckpointValidationError(f"keep_card=True, but {folder} has no {CARD_FILE}.")
        card = (folder / CARD_FILE).read_text(encoding="utf-8")
    else:
        card = str(build_model_card(folder, repo_id=repo_id, options=card_options))
    files = [UploadFile(path.name, source=path) for path in paths]
    files.append(UploadFile(CARD_FILE, content=card.encode("utf-8")))
    files.sort(key=lambda file: file.path_in_repo)
    return UploadPlan(folder, repo_id, model_type, files, card, not keep_card, not_uploaded)


def find_secrets(plan: UploadPlan, token: str | None) -> list[str]:
    """Files of the plan that contain `token` or any Hub access token (weights: their safetensors header only)."""
    found = []
    needle = token.encode("utf-8") if token else None
    for file in plan.files:
        if file.content is not None:
            data = file.content
        elif file.path_in_repo.endswith(".safetensors"):
            data = _safetensors_header(file.source)  # the only free-form part of a weights file (metadata)
        else:
            data = file.source.read_bytes()
        if (needle and needle in data) or TOKEN_PATTERN.search(data):
            found.append(file.path_in_repo)
    return found


def _refuse_secrets(plan: UploadPlan, token: str | None) -> None:
    leaked = find_secrets(plan, token)
    if leaked:
        raise CheckpointValidationError(
            f"Refusing to upload: {', '.join(leaked)} contain(s) a Hugging Face access token. Remove it from the "
            "folder and push again."
        )


def retry_command(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    create_pr: bool = False,
    keep_card: bool = False,
    allow_checkpoint_dirs: bool = False,
    card_options: ModelCardOptions | None = None,
) -> str:
    """The `concept-clip-push` command line that repeats a push."""
    args = ["concept-clip-push", str(folder), "--repo_id", repo_id]
    if private:
        args.append("--private")
    if revision:
        args += ["--revision", revision]
    if create_pr:
        args.append("--create_pr")
    if keep_card:
        args.append("--keep_card")
    if allow_checkpoint_dirs:
        args.append("--allow_checkpoint_dirs")
    if card_options is not None:
        defaults = ModelCardOptions()
        for option in fields(ModelCardOptions):
            value = getattr(card_options, option.name)
            if isinstance(value, list):
                args += [f"--{option.name}", *value] if value else []
            elif value is not None and value != getattr(defaults, option.name):
                args += [f"--{option.name}", str(value)]
    return shlex.join(args)


def push_checkpoint(
    folder: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    *,
    commit_message: str | None = None,
    create_pr: bool = False,
    token: str | None = None,
    dry_run: bool = False,
    keep_card: bool = False,
    card_options: ModelCardOptions | None = None,
    allow_checkpoint_dirs: bool = False,
) -> PushResult:
    """Upload a checkpoint folder to the Hub in one commit (see the module docstring for what is uploaded).

    Args:
        folder: checkpoint folder (the `--output_dir` of `training/train.py`).
        repo_id: `namespace/name`, or a bare name for your own namespace; created if needed.
        private: create the repository as private (an existing repository keeps its visibility).
        revision: branch to commit to (created from `main` if needed); default: `main`.
        commit_message: default: "Upload C2LIP checkpoint (<model type>)".
        create_pr: open a pull request instead of committing to the branch.
        token: Hub token; default: `HF_TOKEN` or the token saved by `hf auth login`. Never logged.
        dry_run: check and render everything, upload nothing (the returned result has the file list and card).
        keep_card: upload the folder's own `README.md` instead of rendering the card.
        card_options: metadata for the rendered card (see `ModelCardOptions`).
        allow_checkpoint_dirs: tolerate `checkpoints/` beside the exported model (never uploaded).

    Raises:
        CheckpointValidationError: the folder may not be published (nothing was sent).
        HubUploadError: no token, or the Hub refused or failed; the local folder is unchanged.
    """
    plan = plan_upload(folder, repo_id, keep_card, card_options, allow_checkpoint_dirs)
    retry = retry_command(
        folder, repo_id, private, revision, create_pr, keep_card, allow_checkpoint_dirs, card_options
    )
    token = token or get_token()
    _refuse_secrets(plan, token)  # before any network call, dry run included
    if dry_run:
        logger.info("Dry run: %d files would go to %s; nothing uploaded.", len(plan.files), repo_id)
        return PushResult(repo_id, plan.paths, plan.card, dry_run=True, summary=plan.describe(), revision=revision)
    if not token:
        raise HubUploadError(
            "No Hugging Face token found: run `hf auth login` or set HF_TOKEN, then retry with:\n  " + retry
        )
    api = HfApi(token=token)
    message = commit_message or f"Upload C2LIP checkpoint ({plan.model_type})"
    try:
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        full_id = getattr(repo_url, "repo_id", None) or repo_id
        if full_id != repo_id and not keep_card:
            # A bare name was completed with the user's namespace: the snippets should name the real repository.
            plan = plan_upload(folder, full_id, keep_card, card_options, allow_checkpoint_dirs)
            _refuse_secrets(plan, token)
        if revision and revision != "main":
            api.create_branch(full_id, branch=revision, exist_ok=True, repo_type="model")
        logger.info("Uploading %d files to %s: %s", len(plan.files), full_id, ", ".join(plan.paths))
        info = api.create_commit(
            full_id,
            operations=[file.operation() for file in plan.files],
            commit_message=message,
            revision=revision,
            create_pr=create_pr,
            repo_type="model",
        )
    except CheckpointValidationError:
        raise
    except Exception as error:  # any Hub, network or I/O failure: the local folder is untouched, say how to retry
        detail = f"{type(error).__name__}: {error}".replace(token, "<token>")
        raise HubUploadError(
            f"Upload of {folder} to {repo_id} failed ({detail}). Nothing in {folder} was changed; retry with:\n  "
            + retry
        ) from None
    commit_url = getattr(info, "commit_url", None) or str(info)
    logger.info("Uploaded %s to %s: %s", folder, full_id, commit_url)
    return PushResult(
        full_id,
        plan.paths,
        plan.card,
        dry_run=False,
        summary=plan.describe(),
        revision=revision,
        commit_url=commit_url,
        pr_url=getattr(info, "pr_url", None),
    )
