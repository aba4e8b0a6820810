"""Engine settings that one process can check (the engines themselves run on 2 processes in
tests/test_train_distributed.py): FSDP settings the loop refuses, and batches pinned and copied without blocking."""

import os
from unittest import mock

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import FullyShardedDataParallelPlugin
from torch.utils.data import DataLoader
from transformers import AutoProcessor

from modeling_concept_clip.testing_utils import save_tiny_checkpoint
from modeling_concept_clip.training import data as training_data
from modeling_concept_clip.training import loop, parse_arguments
from modeling_concept_clip.training.data import build_loaders
from modeling_concept_clip.training.engines import build_accelerator
from modeling_concept_clip.training.state import TrainState

from .test_train import common_flags, run_training
from .train_fixtures import as_flags, make_rows, write_dataset


def test_fsdp2_settings_that_the_loop_cannot_honour_are_refused_before_the_model_loads():
    """The loop shards the model itself; `cpu_ram_efficient_loading` (only process 0 would load weights) and
    `ignored_modules` (gradients not averaged) would be silently wrong, so they are refused with the setting named."""
    from modeling_concept_clip.training.engines import check_fsdp_plugin

    def plugin(**settings):
        with mock.patch.dict(os.environ):  # the plugin exports its settings to the environment
            return FullyShardedDataParallelPlugin(**{"fsdp_version": 2, **settings})

    check_fsdp_plugin(plugin(activation_checkpointing=True))  # applied by the loop (2-process test)
    with pytest.raises(ValueError, match="fsdp_cpu_ram_efficient_loading.*fsdp_cpu_ram_efficient_loading: false"):
        check_fsdp_plugin(plugin(cpu_ram_efficient_loading=True))
    with pytest.raises(ValueError, match="fsdp_ignored_modules.*--freeze_vision_tower"):
        check_fsdp_plugin(plugin(ignored_modules="text_model"))
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        check_fsdp_plugin(plugin(fsdp_version=1))


def test_batches_for_an_accelerator_are_pinned_and_copied_without_blocking(tmp_path, monkeypatch):
    """Data loaders collate into pinned memory when the batches go to an accelerator (map-style, stream and
    validation loaders); the prepared loaders and the training step copy them with `non_blocking=True`. (On this
    CPU-only machine the device is faked for the loaders; the copies themselves need a GPU to measure.)"""
    checkpoint = save_tiny_checkpoint(tmp_path / "clip", "clip")
    data = as_flags(write_dataset(tmp_path / "data", "jsonl", make_rows(8)))
    flags = common_flags(str(checkpoint), tmp_path / "out", steps=1, batch=4) + data
    flags += ["--validation_file", data[data.index("--train_file") + 1]]
    processor = AutoProcessor.from_pretrained(checkpoint)

    def loaders(extra: list[str] = ()):
        arguments = parse_arguments(flags + list(extra))
        AcceleratorState._reset_state(reset_partial_state=True)
        accelerator = build_accelerator(arguments.training)
        assert accelerator.dataloader_config.non_blocking
        return build_loaders(accelerator, arguments, processor, "clip")[0]

    cpu = loaders()
    assert not cpu.train.pin_memory and not cpu.validation.pin_memory  # nothing to pin for (and no warning)
    with monkeypatch.context() as patch:
        patch.setattr(Accelerator, "device", property(lambda self: torch.device("cuda")))
        gpu = loaders()
        assert gpu.train.pin_memory and gpu.validation.pin_memory
        made = []  # a stream's loader is made by `train_batches`
        patch.setattr(
            training_data, "DataLoader", lambda *args, **kwargs: made.append(kwargs) or DataLoader(*args, **kwargs)
        )
        loaders(["--streaming", "true", "--max_train_steps", "1"]).train_batches(TrainState())
        assert len(made) == 2 and all(kwargs["pin_memory"] for kwargs in made)  # validation and stream loaders
    AcceleratorState._reset_state(reset_partial_state=True)

    copies = []
    send_to_device = loop.send_to_device

    def recording_send_to_device(batch, device, **kwargs):
        copies.append(kwargs)
        return send_to_device(batch, device, **kwargs)

    monkeypatch.setattr(loop, "send_to_device", recording_send_to_device)
    assert run_training(flags)["completed_steps"] == 1
    assert copies and all(kwargs.get("non_blocking") for kwargs in copies)
