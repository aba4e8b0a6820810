"""`concept-clip-push`: publish a trained checkpoint folder to the Hugging Face Hub.

    concept-clip-push outputs/c2lip --repo_id me/c2lip-siglip-b16 --dry_run   # print the file list and the card
    concept-clip-push outputs/c2lip --repo_id me/c2lip-siglip-b16 --private

The token comes from `HF_TOKEN` or `hf auth login` (there is deliberately no `--token` flag: a token on the
command line ends up in shell histories and process lists).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ..hub import CheckpointValidationError, HubUploadError, push_checkpoint
from ..model_cards import ModelCardOptions

logger = logging.getLogger(__name__)


@dataclass
class PushArguments:
    repo_id: str = field(
        metadata={"help": "Hub repository, 'namespace/name' (a bare name goes to your own namespace)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    revision: str | None = field(default=None, metadata={"help": "Branch to commit to (created if needed)."})
    commit_message: str | None = field(default=None, metadata={"help": "Commit message."})
    create_pr: bool = field(default=False, metadata={"help": "Open a pull request instead of committing."})
    dry_run: bool = field(default=False, metadata={"help": "Print the files and the card; upload nothing."})
    keep_card: bool = field(
        default=False, metadata={"help": "Upload the folder's own README.md instead of rendering the card."}
    )
    allow_checkpoint_dirs: bool = field(
        default=False, metadata={"help": "Tolerate checkpoints/ beside the exported model (never uploaded)."}
    )


def parse_arguments(argv: list[str] | None = None) -> tuple[str, PushArguments, ModelCardOptions]:
    parser = HfArgumentParser(
        (PushArguments, ModelCardOptions), prog="concept-clip-push", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", help="Checkpoint folder written by training/train.py.")
    push_args, card_options, rest = parser.parse_args_into_dataclasses(args=argv)
    return rest.output_dir, push_args, card_options


def main(argv: list[str] | None = None) -> int:
    """Run `concept-clip-push`; returns the exit status (0: pushed or dry run done, 1: refused or failed)."""
    folder, args, card_options = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        result = push_checkpoint(
            folder,
            repo_id=args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            create_pr=args.create_pr,
            dry_run=args.dry_run,
            keep_card=args.keep_card,
            card_options=card_options,
            allow_checkpoint_dirs=args.allow_checkpoint_dirs,
        )
    except (CheckpointValidationError, HubUploadError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 1
    if result.dry_run:
        print(f"Dry run: nothing uploaded.\n{result.summary}\n\n----- README.md -----\n{result.card}")
    else:
        print(result.pr_url or result.commit_url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
