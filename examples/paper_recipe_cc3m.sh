#!/usr/bin/env bash
# The paper's recipe (GPU): SigLIP ViT-B/16 (WebLI, 224 px) fine-tuned with C2LIP on CC3M with the short DreamLIP
# re-captions, 5 epochs, global batch 768 (96 x 8 GPUs), AdamW lr 1e-5, cosine schedule, 50 warm-up steps, bf16.
# The hyper-parameters live in training/configs/siglip_b16_cc3m.yaml, the 8-GPU DDP setup in
# training/configs/accelerate/ddp_8gpu.yaml; flags given here override the recipe.
#
#   bash examples/paper_recipe_cc3m.sh                                # as in the paper
#   bash examples/paper_recipe_cc3m.sh --model google/siglip-base-patch16-256 --output_dir outputs/c2lip_256
#   bash examples/paper_recipe_cc3m.sh --concept_loss false --output_dir outputs/control   # the control run
#   bash examples/paper_recipe_cc3m.sh --dry_run                      # print the command, run nothing
#
# Then evaluate and publish:
#   concept-clip-eval --model google/siglip-base-patch16-224 outputs/c2lip --benchmarks sugarcrepe sugarcrepe_pp \
#       imagenet coco_retrieval flickr30k_retrieval --data_dir data --output outputs/c2lip/results.json
#   concept-clip-push outputs/c2lip --repo_id <you>/c2lip-siglip-b16-cc3m --dry_run   # then without --dry_run
set -euo pipefail
cd "$(dirname "$0")/.."

ACCELERATE_CONFIG=training/configs/accelerate/ddp_8gpu.yaml
RECIPE=training/configs/siglip_b16_cc3m.yaml
dry_run=0
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --model) args+=(--model_name_or_path "$2"); shift 2 ;;  # the examples' common flag
        --model=*) args+=("--model_name_or_path=${1#--model=}"); shift ;;
        --dry_run) dry_run=1; shift ;;
        *) args+=("$1"); shift ;;
    esac
done
command=(accelerate launch --config_file "$ACCELERATE_CONFIG" training/train.py --config "$RECIPE" "${args[@]}")

if [[ $dry_run == 1 ]]; then
    printf '%q ' "${command[@]}"
    echo
    exit 0
fi
for file in "$ACCELERATE_CONFIG" "$RECIPE"; do
    [[ -f $file ]] || { echo "Missing $file (part of the repository's training configs)." >&2; exit 1; }
done
exec "${command[@]}"
