"""Publishing to the Hub, offline: `HfApi` is patched, the uploaded bytes and the logs are inspected."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl
from huggingface_hub.repocard_data import model_index_to_eval_results
from transformers import CLIPModel

from modeling_concept_clip import hub
from modeling_concept_clip.commands.push import main as push_main
from modeling_concept_clip.evaluation import EvaluationRun, MetricValue, SugarCrepeConfig, save_runs
from modeling_concept_clip.hub import CheckpointValidationError, HubUploadError, push_checkpoint
from modeling_concept_clip.testing_utils import save_tiny_checkpoint

FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtokenFAKE1234"
EXPECTED_FILES = {
    "README.md",
    "config.json",
    "model.safetensors",
    "processor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "training_args.json",
    "results.json",
}


class FakeHub:
    """Records what `HfApi` was asked to do; `fail` makes `create_commit` raise."""

    def __init__(self, namespace: str = "me", fail: Exception | None = None):
        self.namespace, self.fail = namespace, fail
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        self.tokens: set[str | None] = set()

    def install(self, monkeypatch):
        fake = self

        def create_repo(api, repo_id, **kwargs):
            fake.tokens.add(api.token)
            fake.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            full = repo_id if "/" in repo_id else f"{fake.namespace}/{repo_id}"
            return RepoUrl(f"https://huggingface.co/{full}")

        def create_branch(api, repo_id, **kwargs):
            fake.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def create_commit(api, repo_id, operations, **kwargs):
            fake.tokens.add(api.token)
            fake.calls.append(("create_commit", {"repo_id": repo_id, **kwargs}))
            if fake.fail is not None:
                raise fake.fail
            for operation in operations:
                with operation.as_file() as handle:
                    fake.uploaded[operation.path_in_repo] = handle.read()
            return CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
                commit_message=kwargs["commit_message"],
                commit_description="",
                oid="abc123",
            )

        def forbidden(api, *args, **kwargs):
            raise AssertionError("only create_repo, create_branch and create_commit may be called")

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "create_commit", create_commit)
        monkeypatch.setattr(HfApi, "upload_folder", forbidden)
        monkeypatch.setattr(HfApi, "upload_file", forbidden)
        return self

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "clip", "clip")


@pytest.fixture
def folder(tiny_clip, tmp_path) -> Path:
    """An exported training run: checkpoint, training record, results, and files that must stay local."""
    out = tmp_path / "run"
    out.mkdir()
    for path in tiny_clip.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    args = {
        "model": {"model_name_or_path": "openai/clip-vit-base-patch32"},
        "data": {"train_file": "data/train.jsonl", "max_concepts_per_image": 8},
        "concept": {"concept_loss": True, "npc_weight": 1.0, "xac_weight": 0.01, "tau": 1.0},
        "training": {"learning_rate": 1e-5, "per_device_train_batch_size": 8, "max_train_steps": 3},
        "recipe": None,
        "concept_extraction": {"spacy_model": None, "mode": "parser", "max_concepts": 8, "fallback": "caption"},
        "num_processes": 1,
        "completed_steps": 3,
    }
    (out / "training_args.json").write_text(json.dumps(args))
    result = SugarCrepeConfig(data_dir="sc", image_root="img").make_result(
        [MetricValue("swap", 0.5, "accuracy", "Accuracy (Swap, mean of subsets)")], {"total": 4}
    )
    save_runs(
        [EvaluationRun(model={"name_or_path": str(out)}, settings={}, benchmarks=[result])], out / "results.json"
    )
    (out / "train_log.jsonl").write_text('{"step": 1, "loss": 4.1}\n')
    (out / "export-2").mkdir()
    (out / "export-2" / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    (out / "runs").mkdir()  # tensorboard logs
    (out / "runs" / "events.out.tfevents").write_bytes(b"\x00events")
    return out


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}  # fmt: skip


@pytest.fixture
def token_env(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    return FAKE_TOKEN


def test_push_uploads_exactly_the_allow_list_in_one_commit(folder, token_env, monkeypatch, caplog, capsys):
    fake = FakeHub().install(monkeypatch)
    before = snapshot(folder)
    caplog.set_level(logging.DEBUG)
    # The exact call of training/train.py.
    result = push_checkpoint(str(folder), repo_id="me/c2lip-tiny", private=True, revision=None)

    assert fake.names() == ["create_repo", "create_commit"]
    assert fake.calls[0][1]["private"] is True and fake.calls[0][1]["exist_ok"] is True
    assert set(fake.uploaded) == EXPECTED_FILES == set(result.files)
    assert not any(name.endswith(hub.PICKLE_SUFFIXES) for name in fake.uploaded)
    assert fake.uploaded["model.safetensors"] == (folder / "model.safetensors").read_bytes()
    assert result.commit_url == "https://huggingface.co/me/c2lip-tiny/commit/abc123"
    assert fake.tokens == {FAKE_TOKEN}  # the token was used ...
    logged = caplog.text + "".join(capsys.readouterr())
    for name, data in fake.uploaded.items():  # ... and appears in no uploaded byte nor log line
        assert FAKE_TOKEN.encode() not in data, name
    assert FAKE_TOKEN not in logged and "hf_FAKE" not in logged
    assert snapshot(folder) == before  # nothing written locally (the card is uploaded from memory)

    card = ModelCard(fake.uploaded["README.md"].decode())
    assert card.data.library_name == "transformers" and card.data.base_model == "openai/clip-vit-base-patch32"
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert name == "c2lip-tiny" and [r.metric_value for r in results] == [50.0]
    assert 'CLIPModel.from_pretrained("me/c2lip-tiny")' in card.text


def test_revision_branch_and_bare_repo_name(folder, token_env, monkeypatch):
    fake = FakeHub(namespace="alice").install(monkeypatch)
    result = push_checkpoint(str(folder), repo_id="c2lip-tiny", revision="v1")
    assert fake.names() == ["create_repo", "create_branch", "create_commit"]
    assert fake.calls[1][1]["branch"] == "v1" and fake.calls[2][1]["revision"] == "v1"
    assert fake.calls[2][1]["repo_id"] == result.repo_id == "alice/c2lip-tiny"
    assert b'from_pretrained("alice/c2lip-tiny")' in fake.uploaded["README.md"]


def test_upload_error_keeps_the_folder_and_says_how_to_retry(folder, token_env, monkeypatch, caplog):
    fake = FakeHub(fail=OSError(f"503 Service Unavailable (Authorization: Bearer {FAKE_TOKEN})")).install(monkeypatch)
    before = snapshot(folder)
    with pytest.raises(HubUploadError) as error:
        push_checkpoint(str(folder), repo_id="me/c2lip-tiny", private=True, revision="v1")
    message = str(error.value)
    assert "503 Service Unavailable" in message and FAKE_TOKEN not in message
    assert f"concept-clip-push {folder} --repo_id me/c2lip-tiny --private --revision v1" in message
    assert snapshot(folder) == before
    assert fake.names()[-1] == "create_commit" and not fake.uploaded
    # The CLI reports the same, exit status 1, without the token.
    caplog.clear()
    assert push_main([str(folder), "--repo_id", "me/c2lip-tiny"]) == 1
    assert "Nothing in" in caplog.text and FAKE_TOKEN not in caplog.text


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda f: torch.save({"w": torch.zeros(2)}, f / "pytorch_model.bin"), "pickle files found"),
        (lambda f: torch.save({"w": torch.zeros(2)}, f / "model.safetensors"), "not a valid safetensors file"),
        (lambda f: (f / "optimizer.bin").write_bytes(b"\x80\x04state"), "pickle files found"),
        (lambda f: (f / "checkpoints" / "checkpoint-2").mkdir(parents=True), "training checkpoints found"),
        (lambda f: (f / "model.safetensors").unlink(), "no safetensors weights"),
        (lambda f: (f / "tokenizer.json").unlink() or (f / "tokenizer_config.json").unlink(), "no tokenizer"),
        (lambda f: edit_config(f, architectures=["ConceptCLIPModel"]), "expected ['CLIPModel']"),
        (lambda f: edit_config(f, model_type="bert"), "only 'clip' and 'siglip'"),
        (lambda f: edit_config(f, auto_map={"AutoModel": "modeling.X"}), "custom code"),
        (lambda f: (f / "config.json").unlink(), "config.json is missing"),
    ],
)
def test_refused_folders_upload_nothing(folder, token_env, monkeypatch, damage, reason):
    fake = FakeHub().install(monkeypatch)
    damage(folder)
    with pytest.raises(CheckpointValidationError, match=reason.replace("[", r"\[").replace("]", r"\]")):
        push_checkpoint(str(folder), repo_id="me/x")
    with pytest.raises(CheckpointValidationError):
        push_checkpoint(str(folder), repo_id="me/x", dry_run=True)
    assert fake.calls == []


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_checkpoint_dirs_can_be_allowed_but_are_never_uploaded(folder, token_env, monkeypatch):
    fake = FakeHub().install(monkeypatch)
    state = folder / "checkpoints" / "checkpoint-2"
    state.mkdir(parents=True)
    torch.save({"w": torch.zeros(2)}, state / "optimizer.bin")
    push_checkpoint(str(folder), repo_id="me/x", allow_checkpoint_dirs=True)
    assert set(fake.uploaded) == EXPECTED_FILES


def test_a_token_inside_a_file_is_refused_before_any_call(folder, token_env, monkeypatch):
    fake = FakeHub().install(monkeypatch)
    args = json.loads((folder / "training_args.json").read_text())
    args["training"]["hub_token"] = FAKE_TOKEN
    (folder / "training_args.json").write_text(json.dumps(args))
    with pytest.raises(CheckpointValidationError, match="training_args.json") as error:
        push_checkpoint(str(folder), repo_id="me/x")
    assert FAKE_TOKEN not in str(error.value) and fake.calls == []
    # Someone else's token is refused as well (any Hub token pattern).
    monkeypatch.setenv("HF_TOKEN", "hf_another" + "x" * 30)
    with pytest.raises(CheckpointValidationError, match="access token"):
        push_checkpoint(str(folder), repo_id="me/x", dry_run=True)


def test_missing_token_fails_before_any_call(folder, monkeypatch):
    fake = FakeHub().install(monkeypatch)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(HubUploadError, match="hf auth login"):
        push_checkpoint(str(folder), repo_id="me/x")
    assert fake.calls == []


def test_cli_dry_run_prints_the_file_list_and_the_card(folder, token_env, monkeypatch, capsys):
    fake = FakeHub().install(monkeypatch)
    status = push_main([str(folder), "--repo_id", "me/c2lip-tiny", "--dry_run", "--license", "mit",
                        "--datasets", "pixparse/cc3m-wds", "--tags", "tiny"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0 and fake.calls == []
    listed = {
        line.split()[0] for line in out.split("----- README.md -----")[0].splitlines()[2:] if line.startswith("  ")
    }
    assert listed == EXPECTED_FILES
    assert "Not uploaded (not on the allow-list): export-2/, runs/, train_log.jsonl" in out
    card = ModelCard(out.split("----- README.md -----\n", 1)[1])
    assert card.data.license == "mit" and card.data.datasets == ["pixparse/cc3m-wds"] and "tiny" in card.data.tags
    assert FAKE_TOKEN not in out


def test_cli_refuses_a_base_model_of_another_model_type(folder, token_env, monkeypatch, caplog, capsys):
    """The folder holds a CLIP: a SigLIP as `--base_model` would put a wrong model in the card and the Hub's model
    tree. Offline (as here), the type comes from the name; online, from the base model's config.json."""
    fake = FakeHub().install(monkeypatch)
    status = push_main([str(folder), "--repo_id", "me/c2lip-tiny", "--base_model", "google/siglip-base-patch16-224"])
    assert status == 1 and fake.calls == []
    assert (
        "--base_model google/siglip-base-patch16-224 is a siglip model (its name says siglip; its config.json could "
        f"not be read), but {folder / 'config.json'} says model_type 'clip': pass the Hub id of the clip checkpoint "
        "this model was trained from (training_args.json records --model_name_or_path openai/clip-vit-base-patch32), "
        "or leave --base_model out."
    ) in caplog.text
    assert (
        push_main(
            [str(folder), "--repo_id", "me/c2lip-tiny", "--dry_run", "--base_model", "openai/clip-vit-large-patch14"]
        )
        == 0
    )
    assert "base_model: openai/clip-vit-large-patch14" in capsys.readouterr().out


def test_cli_push_and_keep_card(folder, token_env, monkeypatch, capsys):
    fake = FakeHub().install(monkeypatch)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# my own card\n")
    assert push_main([str(folder), "--repo_id", "me/x", "--keep_card", "--commit_message", "first"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/me/x/commit/abc123"
    assert fake.uploaded["README.md"] == b"---\nlicense: mit\n---\n# my own card\n"
    assert fake.calls[-1][1]["commit_message"] == "first"


def test_sharded_weights_upload_the_index_and_every_shard(tiny_clip, folder, token_env, monkeypatch):
    fake = FakeHub().install(monkeypatch)
    (folder / "model.safetensors").unlink()
    CLIPModel.from_pretrained(tiny_clip).save_pretrained(folder, max_shard_size="100KB")
    shards = {p.name for p in folder.glob("model-*-of-*.safetensors")}
    assert len(shards) > 1
    push_checkpoint(str(folder), repo_id="me/x")
    assert set(fake.uploaded) == EXPECTED_FILES - {"model.safetensors"} | {"model.safetensors.index.json"} | shards
