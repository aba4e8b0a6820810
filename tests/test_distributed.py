"""Two CPU processes (gloo) against one process on the same global batch: losses and gradients."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_two_processes(script: str, marker: str) -> dict:
    """Run `tests/<script>` in 2 gloo processes (torchrun); the JSON report it printed after `marker`."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(ROOT / "tests" / script),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith(marker))
    return json.loads(line[len(marker) :])


@pytest.mark.slow
def test_two_processes_match_single_process():
    report = run_two_processes("distributed_c2lip_check.py", "C2LIP-DISTRIBUTED-OK ")
    # Hard negatives on one process only, without and with the concept losses (NegCLIP's baseline; C2LIP + them).
    hard_negatives = report.pop("hard_negatives")
    assert {(kind, name) for kind in hard_negatives for name in hard_negatives[kind]} == {
        (kind, name) for kind in ("clip", "siglip") for name in ("negclip", "c2lip")
    }
    for kind in hard_negatives.values():
        for values in kind.values():
            assert values["max_grad_diff"] < 2e-5
            loss, reference = values["loss"]
            assert abs(loss - reference) < 1e-4
    models = {"clip/owner", "clip/shared", "siglip/owner", "siglip/shared"}
    embeddings = {f"embeddings/{form}/{mode}" for form in ("softmax", "sigmoid") for mode in ("owner", "shared")}
    assert set(report) == models | embeddings
    for name in embeddings:  # losses and gradients checked in the processes; no (concepts x images) global tensor
        assert report[name]["max_grad_diff"] < 2e-5
    for values in (report[name] for name in models):
        assert values["max_grad_diff"] < 2e-5
        total, reference = values["sum_of_shares"]
        assert abs(total - reference) < 1e-4


@pytest.mark.slow
def test_fsdp2_sharded_siglip_matches_single_process():
    report = run_two_processes("distributed_fsdp2_check.py", "FSDP2-OK ")
    assert report["sharded_modules"] >= 6  # embeddings, encoder layers and the pooling head
    assert report["max_grad_diff"] < 2e-5
