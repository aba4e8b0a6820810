#!/usr/bin/env bash
# GPU smoke test of the training engines, for a machine with one CUDA GPU:
#
#     benchmarks/gpu_smoke.sh [STEPS]          # or: make gpu-check
#
# Trains the shapes-world C2LIP recipe (training/configs/demo/c2lip.yaml, from a freshly initialised world model)
# for STEPS steps (default 300) in bf16 through `accelerate launch`, once per engine: one GPU, FSDP2 (one process)
# and, where DeepSpeed is installed, ZeRO-2 (one process). Each run evaluates the demo benchmarks during training and
# at the end, and its export must load as a plain CLIPModel with zero missing/unexpected keys and a 0-dim
# logit_scale. Summary: benchmarks/results/gpu_smoke.txt; runs: outputs/gpu_smoke/<engine>/.
#
# CPU rehearsal of the same commands (Accelerate enables FSDP only on accelerators, so FSDP2 is left out; DeepSpeed
# runs on its CPU accelerator over gloo); the summary goes to outputs/gpu_smoke/gpu_smoke_cpu.txt:
#
#     GPU_SMOKE_CPU=1 benchmarks/gpu_smoke.sh 2
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${1:-300}
PYTHON=${PYTHON:-.venv/bin/python}
ROOT=outputs/gpu_smoke
WORLD=data/shapes_world  # the demo's world: the recipe and its benchmarks read it there
CONFIGS=training/configs/accelerate
export HF_HUB_OFFLINE=1
mkdir -p "$ROOT"

if [[ "${GPU_SMOKE_CPU:-0}" == 1 ]]; then
    SUMMARY=$ROOT/gpu_smoke_cpu.txt
    ENGINES=("single --cpu --num_processes 1")
    DEEPSPEED_FLAGS=(--ddp_backend gloo)
else
    SUMMARY=benchmarks/results/gpu_smoke.txt
    ENGINES=("single --config_file $CONFIGS/single_gpu.yaml" "fsdp2 --config_file $CONFIGS/fsdp_8gpu.yaml --num_processes 1")
    DEEPSPEED_FLAGS=()
    "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU (GPU_SMOKE_CPU=1 rehearses on CPU)'"
fi
if "$PYTHON" -c "import deepspeed" 2>/dev/null; then
    ENGINES+=("deepspeed_zero2 --config_file $CONFIGS/deepspeed_zero2_8gpu.yaml --num_processes 1")
else
    echo "DeepSpeed is not installed: ZeRO-2 is left out (pip install --no-build-isolation deepspeed)."
fi

"$PYTHON" - "$WORLD" "$ROOT/init" <<'EOF'
import sys

from modeling_concept_clip.shapes_world.configs import save_world_checkpoint
from modeling_concept_clip.shapes_world.vocabulary import WorldConfig
from training.demo import ensure_world

world = ensure_world(sys.argv[1])
save_world_checkpoint(sys.argv[2], "clip", world=WorldConfig(**world["world"]), seed=0)
EOF

{
    echo "# benchmarks/gpu_smoke.sh $STEPS ($(date -u +%Y-%m-%dT%H:%MZ))"
    "$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU')"
} > "$SUMMARY"
for engine in "${ENGINES[@]}"; do
    read -r name launch_flags <<< "$engine"
    extra=()
    [[ "$name" == deepspeed* ]] && extra=("${DEEPSPEED_FLAGS[@]}")
    echo "== $name: accelerate launch $launch_flags training/train.py --config training/configs/demo/c2lip.yaml ..."
    # shellcheck disable=SC2086  # launch_flags are words
    "$PYTHON" -m accelerate.commands.launch $launch_flags --num_machines 1 --dynamo_backend no \
        training/train.py --config training/configs/demo/c2lip.yaml --model_name_or_path "$ROOT/init" \
        --output_dir "$ROOT/$name" --overwrite_output_dir --max_train_steps "$STEPS" --logging_steps 50 \
        --mixed_precision bf16 --report_to none "${extra[@]}"
    "$PYTHON" - "$ROOT/$name" "$name" >> "$SUMMARY" <<'EOF'
import json
import sys
from pathlib import Path

from transformers import CLIPModel

folder, name = Path(sys.argv[1]), sys.argv[2]
model, info = CLIPModel.from_pretrained(folder, output_loading_info=True)
assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
assert model.logit_scale.dim() == 0, tuple(model.logit_scale.shape)
run = json.loads((folder / "training_args.json").read_text())
log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
last = [entry for entry in log if "loss" in entry][-1]
results = json.loads((folder / "results.json").read_text())["runs"][-1]["benchmarks"]
swap = {m["key"]: m["value"] for b in results if b["name"] == "probes" for m in b["metrics"]}.get("swap_att")
print(
    f"{name}: {run['distributed_type']}, {run['completed_steps']} steps, loss {last['loss']:.4f}, "
    f"logit scale {last['logit_scale']:.2f}, {last['samples_per_second']:.0f} samples/s, "
    f"{last['train_seconds']:.0f} s training, swap_att {swap}; plain CLIPModel export: 0 missing, 0 unexpected keys"
)
EOF
    tail -n 1 "$SUMMARY"
done
echo "Summary: $SUMMARY"
