"""Where the concept signal goes in a shapes-world fine-tuning: per-step loss terms, their gradients on the shared
parameters, logit scale and bias, positives per concept row (the numbers of the demo's lab notebook).

    python benchmarks/demo_diagnostics.py --config training/configs/demo/c2lip.yaml \
        --model_name_or_path outputs/demo_siglip/bow_prior --output_dir outputs/diag/c2lip --max_train_steps 200

It trains exactly as `python -m training.train` with the same flags would (the same recipe, model, data loaders,
optimizer, schedule, clipping and logit-scale clamp, one process), and every `--diag_every` steps it also computes
the gradient of each loss term alone (caption, NPC, XAC, unweighted) on the shared parameters, by group (vision
tower, text tower, logit scale and bias). Written to `<output_dir>/diagnostics.jsonl`, one line per step:

- `caption_loss`, `npc_loss`, `xac_loss`, `logit_scale` (the multiplier), `logit_bias` (SigLIP), `lr`;
- `grad/<term>/<group>`: L2 norm of the term's gradient on the group; `cos/<a>,<b>/<group>`: cosine between the
  gradients of two terms (negative: the terms pull the shared weights apart);
- `caption_pos_logit`, `caption_neg_logit`, `npc_pos_logit`, `npc_neg_logit`: mean logit on positive and negative
  pairs (SigLIP: `scale * cos + bias`; CLIP: `scale * cos`); `*_pos_prob` / `*_neg_prob`: mean sigmoid of them;
- `concepts`, `distinct_concepts`, `positives_per_concept` (mean images per concept row), `positive_fraction` (mean
  positive share of a concept row), `max_positives`.

Steps without `--diag_every` cost one training step; a diagnostic step costs about one extra backward per term.
`--softmax_npc_terms concept_to_images|image_to_concepts` (diagnosis only, one process) keeps one of the two
directions of the CLIP (softmax) concept losses.

    python benchmarks/demo_diagnostics.py --perception outputs/demo_siglip/bow_prior \
        [--zeroshot_dir data/shapes_world/validation/zeroshot]

How a checkpoint perceives each attribute of single objects (the zero-shot images of the validation split, with
every attribute of their object from `objects.jsonl`): zero-shot top-1 with the world's prompt templates, zero-shot with prompts
made only of caption words ("a red circle" ... averaged over the other attribute), and a linear probe of the image
embedding (logistic regression, trained on one half of the images of each class, tested on the other): the probe
says whether the image tower perceives the attribute, zero-shot whether the text side is aligned with it.

    python benchmarks/demo_diagnostics.py --retrieval outputs/demo/c2lip [--part data/shapes_world/validation]

Image-text retrieval on a held-out part, with the text-to-image errors taken apart: how many of the query caption's
objects the wrongly retrieved image has (exactly, and up to one attribute), whether it has them all, whether its
background is the caption's, the margin between the true image and the best wrong one, and how spread out the
image and caption embeddings are (mean cosine between different images, different captions).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.utils import send_to_device, set_seed

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from modeling_concept_clip.losses import concept_positive_mask  # noqa: E402


def _parse(argv: list[str]):
    """The training flags (as `training.train` reads them), `--diag_every N` and `--softmax_npc_terms`."""
    from modeling_concept_clip.training.arguments import parse_arguments

    own = {"--diag_every": "5", "--softmax_npc_terms": "both"}
    rest = []
    iterator = iter(argv)
    for arg in iterator:
        if arg in own:
            own[arg] = next(iterator)
        else:
            rest.append(arg)
    return parse_arguments(rest), int(own["--diag_every"]), own["--softmax_npc_terms"]


def keep_one_softmax_direction(direction: str) -> None:
    """Diagnosis only: make the softmax (CLIP) concept losses use one of their two directions (`concept_to_images`
    or `image_to_concepts`), at the weight of their mean, by patching `losses._softmax_concept_shares`."""
    from modeling_concept_clip import losses

    original = losses._softmax_concept_shares

    def patched(batch, logits, positives):
        if direction == "concept_to_images":
            positives_for_images = positives[:, batch.local_images].T & False  # no image -> concepts term
        else:
            positives_for_images = positives[:, batch.local_images].T
        image_to_concepts = losses.soft_target_cross_entropy(logits.transpose(1, 2), positives_for_images)
        num_images = positives.any(0).sum().clamp_min(1)
        all_logits = logits  # one process
        concept_to_images = losses.soft_target_cross_entropy(all_logits[:, batch.local_concepts], positives)
        if direction == "concept_to_images":
            return concept_to_images.sum(-1) / batch.concepts.shape[0]
        return image_to_concepts.sum(-1) / num_images

    if direction != "both":
        if direction not in ("concept_to_images", "image_to_concepts"):
            raise ValueError(f"--softmax_npc_terms must be both, concept_to_images or image_to_concepts: {direction}")
        losses._softmax_concept_shares = patched
    else:
        losses._softmax_concept_shares = original


def parameter_groups(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The shared parameters by tower: `vision` (tower, projection or SigLIP's pooling head), `text`, `scalars`."""
    groups: dict[str, list[torch.nn.Parameter]] = {"vision": [], "text": [], "scalars": []}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith(("vision_model", "visual_projection")):
            groups["vision"].append(parameter)
        elif name.startswith(("text_model", "text_projection")):
            groups["text"].append(parameter)
        else:
            groups["scalars"].append(parameter)
    return groups


def _flat(gradients, parameters) -> torch.Tensor:
    return torch.cat(
        [(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(gradients, parameters)]
    )


def term_gradients(terms: dict[str, torch.Tensor], groups: dict[str, list[torch.nn.Parameter]]) -> dict[str, float]:
    """Norm of each term's gradient per group and the cosine between each pair of terms per group."""
    parameters = [p for group in groups.values() for p in group]
    flat = {}
    for name, value in terms.items():
        gradients = torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
        flat[name] = _flat(gradients, parameters)
    record = {}
    offsets, start = {}, 0
    for group, members in groups.items():
        size = sum(p.numel() for p in members)
        offsets[group] = slice(start, start + size)
        start += size
    names = list(flat)
    for group, part in offsets.items():
        for name in names:
            record[f"grad/{name}/{group}"] = flat[name][part].norm().item()
        for i, first in enumerate(names):
            for second in names[i + 1 :]:
                a, b = flat[first][part], flat[second][part]
                denominator = (a.norm() * b.norm()).item()
                record[f"cos/{first},{second}/{group}"] = (a @ b).item() / denominator if denominator else 0.0
    return record


@torch.no_grad()
def pair_statistics(outputs, batch: dict, scale: float, bias: float, sigmoid: bool) -> dict[str, float]:
    """Mean logit (and sigmoid of it) on positive and negative pairs of the caption and NPC matrices, and how many
    images each concept row has as positives ("shared" positives)."""
    images, texts = outputs.image_embeds, outputs.text_embeds
    record = {}
    caption = scale * texts @ images.T + bias
    eye = torch.eye(caption.shape[0], dtype=torch.bool)
    matrices = {"caption": (caption, eye)}
    if getattr(outputs, "concept_embeds", None) is not None:
        concepts = F.normalize(outputs.concept_embeds, dim=-1)
        positives = concept_positive_mask(
            batch["concept_image_index"], images.shape[0], batch.get("concept_ids"), "shared"
        )
        matrices["npc"] = (scale * concepts @ images.T + bias, positives)
        counts = positives.sum(1).float()
        record.update(
            concepts=int(concepts.shape[0]),
            distinct_concepts=int(batch["concept_unique_index"].shape[0]),
            positives_per_concept=counts.mean().item(),
            positive_fraction=(counts / images.shape[0]).mean().item(),
            max_positives=int(counts.max().item()),
        )
    for name, (logits, positives) in matrices.items():
        record[f"{name}_pos_logit"] = logits[positives].mean().item()
        record[f"{name}_neg_logit"] = logits[~positives].mean().item()
        if sigmoid:
            record[f"{name}_pos_prob"] = torch.sigmoid(logits[positives]).mean().item()
            record[f"{name}_neg_prob"] = torch.sigmoid(logits[~positives]).mean().item()
    return record


def _zeroshot_objects(zeroshot_dir: Path) -> list[tuple[Path, dict[str, str]]]:
    """Every zero-shot image of `zeroshot_dir` with its task and the attributes of its object (`objects.jsonl`)."""
    items = []
    for line in (zeroshot_dir / "objects.jsonl").read_text().splitlines():
        row = json.loads(line)
        (obj,) = json.loads(row["scene"])["objects"]
        items.append((zeroshot_dir / row["file_name"], {"task": row["task"], **obj}))
    return items


def _accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    return 100 * (scores.argmax(1) == labels).float().mean().item()


def _linear_probe(features: torch.Tensor, labels: torch.Tensor, train: torch.Tensor, num_classes: int) -> float:
    """Test accuracy of an L2-regularised logistic regression trained (L-BFGS) on the rows where `train`."""
    with torch.enable_grad():
        probe = torch.nn.Linear(features.shape[1], num_classes)
        optimizer = torch.optim.LBFGS(probe.parameters(), max_iter=200)

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(probe(features[train]), labels[train]) + 1e-3 * probe.weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        return _accuracy(probe(features[~train]), labels[~train])


@torch.no_grad()
def perception(
    model_dir: str, zeroshot_dir: str = "data/shapes_world/validation/zeroshot"
) -> dict[str, dict[str, float]]:
    """Zero-shot (world templates, caption-word prompts) and linear-probe accuracy per attribute, in percent."""
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    from modeling_concept_clip.shapes_world.captions import article
    from modeling_concept_clip.shapes_world.generate import ZEROSHOT_TEMPLATES
    from modeling_concept_clip.shapes_world.vocabulary import WorldConfig

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    siglip = model.config.model_type == "siglip"
    world = WorldConfig()
    items = _zeroshot_objects(Path(zeroshot_dir))

    def embed_texts(texts: list[str]) -> torch.Tensor:
        inputs = processor.tokenizer(texts, padding="max_length" if siglip else True, return_tensors="pt")
        return F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1)

    pixels = processor.image_processor([Image.open(path).convert("RGB") for path, _ in items], return_tensors="pt")
    images = F.normalize(model.get_image_features(pixel_values=pixels.pixel_values).pooler_output, dim=-1)
    report: dict[str, dict[str, float]] = {}
    generator = torch.Generator().manual_seed(0)
    for task in ZEROSHOT_TEMPLATES:
        rows = [i for i, (_, labels) in enumerate(items) if labels["task"] == task]
        classes = world.values(task)
        labels = torch.tensor([classes.index(items[i][1][task]) for i in rows])
        features = images[rows]

        def classifier(prompts: list[list[str]]) -> torch.Tensor:
            return torch.stack([F.normalize(embed_texts(p).mean(0), dim=-1) for p in prompts])

        templates = [[template.format(value) for template in ZEROSHOT_TEMPLATES[task]] for value in classes]
        if task == "shape":  # "a circle", "there is a circle", "a red circle" (every colour)
            words = [[f"{article(v)} {v}", f"there is {article(v)} {v}"] for v in classes]
            words = [w + [f"{article(c)} {c} {v}" for c in world.colors] for w, v in zip(words, classes)]
        else:  # "a red circle" over every shape
            words = [[f"{article(v)} {v} {shape}" for shape in world.shapes] for v in classes]
        # Linear probe: half of each class for training, the other half for testing.
        order = torch.randperm(len(rows), generator=generator)
        train = torch.zeros(len(rows), dtype=torch.bool)
        for c in range(len(classes)):
            members = order[labels[order] == c]
            train[members[: len(members) // 2]] = True
        report[task] = {
            "zeroshot_world_templates": _accuracy(features @ classifier(templates).T, labels),
            "zeroshot_caption_words": _accuracy(features @ classifier(words).T, labels),
            "linear_probe": _linear_probe(features, labels, train, len(classes)),
        }
    return report


@torch.no_grad()
def retrieval_errors(model_dir: str, part_dir: str = "data/shapes_world/validation") -> dict[str, float]:
    """Text-to-image and image-to-text R@1 on `part_dir/retrieval.json`, and what the text-to-image errors retrieve."""
    from PIL import Image
    from transformers import AutoModel, AutoProcessor

    from modeling_concept_clip.shapes_world.scenes import Scene

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    siglip = model.config.model_type == "siglip"
    part = Path(part_dir)
    scenes = {}
    for line in (part / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        scenes[row["file_name"].removeprefix("images/")] = Scene.from_dict(json.loads(row["scene"]))
    records = json.loads((part / "retrieval.json").read_text())["images"]
    names = [record["filename"] for record in records]
    captions = [(i, s["raw"]) for i, record in enumerate(records) for s in record["sentences"]]
    images = []
    for start in range(0, len(names), 256):
        batch = [Image.open(part / "images" / name).convert("RGB") for name in names[start : start + 256]]
        pixels = processor.image_processor(batch, return_tensors="pt").pixel_values
        images.append(F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1))
    images = torch.cat(images)
    texts = []
    for start in range(0, len(captions), 256):
        chunk = [text for _, text in captions[start : start + 256]]
        inputs = processor.tokenizer(chunk, padding="max_length" if siglip else True, return_tensors="pt")
        texts.append(F.normalize(model.get_text_features(**inputs).pooler_output, dim=-1))
    texts = torch.cat(texts)
    owner = torch.tensor([i for i, _ in captions])
    scores = texts @ images.T  # (captions, images)
    best = scores.argmax(1)
    t2i = (best == owner).float().mean().item()
    image_best = scores.T.argmax(1)
    i2t = (owner[image_best] == torch.arange(len(names))).float().mean().item()
    exact, near, superset, background, wrong_count, margins = [], [], [], [], [], []
    for query, (target, _) in enumerate(captions):
        winner = int(best[query])
        if winner == target:
            continue
        truth, found = scenes[names[target]], scenes[names[winner]]
        keys, found_keys = set(truth.keys()), set(found.keys())
        exact.append(len(keys & found_keys) / len(keys))
        near.append(sum(any(sum(a != b for a, b in zip(k, f)) <= 1 for f in found_keys) for k in keys) / len(keys))
        superset.append(keys <= found_keys)
        background.append(truth.background == found.background)
        wrong_count.append(len(found_keys) != len(keys))
        margins.append((scores[query, target] - scores[query, winner]).item())
    off_diagonal = ~torch.eye(len(names), dtype=torch.bool)

    def mean(values) -> float:
        return float(sum(values) / len(values)) if values else float("nan")

    same_image = owner[:, None] == owner[None, :]
    return {
        "t2i_R@1": 100 * t2i,
        "i2t_R@1": 100 * i2t,
        "t2i_errors": len(exact),
        "errors_share_of_caption_objects": 100 * mean(exact),
        "errors_share_of_caption_objects_up_to_one_attribute": 100 * mean(near),
        "errors_with_every_caption_object": 100 * mean(superset),
        "errors_with_the_caption_background": 100 * mean(background),
        "errors_with_another_number_of_objects": 100 * mean(wrong_count),
        "errors_mean_margin": mean(margins),
        "mean_cosine_between_images": (images @ images.T)[off_diagonal].mean().item(),
        "mean_cosine_between_captions_of_different_images": (texts @ texts.T)[~same_image].mean().item(),
        "mean_cosine_caption_own_image": scores[torch.arange(len(captions)), owner].mean().item(),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--retrieval":
        part = argv[argv.index("--part") + 1] if "--part" in argv else "data/shapes_world/validation"
        print(json.dumps({"model": argv[1], **retrieval_errors(argv[1], part)}, indent=1))
        return 0
    if argv and argv[0] == "--perception":
        folder = argv[argv.index("--zeroshot_dir") + 1] if "--zeroshot_dir" in argv else None
        report = perception(argv[1], folder or "data/shapes_world/validation/zeroshot")
        print(json.dumps({"model": argv[1], **report}, indent=1))
        return 0
    from modeling_concept_clip.training.data import build_loaders
    from modeling_concept_clip.training.engines import build_accelerator, clamp_parameter_
    from modeling_concept_clip.training.loop import build_model, prepare_training
    from modeling_concept_clip.training.state import TrainState

    arguments, diag_every, npc_terms = _parse(argv)
    keep_one_softmax_direction(npc_terms)
    args = arguments.training
    args.report_to = "none"
    accelerator = build_accelerator(args)
    set_seed(args.seed)
    model, processor = build_model(arguments.model, arguments.concept.loss_config())
    loaders, _ = build_loaders(accelerator, arguments, processor, model.config.model_type)
    model, optimizer, scheduler = prepare_training(accelerator, model, loaders, args)
    sigmoid = model.config.model_type == "siglip"
    groups = parameter_groups(model)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    log = open(output / "diagnostics.jsonl", "w")
    step, epoch, start = 0, 0, time.perf_counter()
    while step < args.max_train_steps:
        for batch in loaders.train_batches(TrainState(epoch=epoch)):
            batch.pop("skipped"), batch.pop("num_rows")
            batch = send_to_device(batch, accelerator.device)
            model.train()
            outputs = model(**batch, return_loss=True)
            step += 1
            scale = model.logit_scale.exp().item()
            bias = model.logit_bias.item() if sigmoid else 0.0
            record = {"step": step, "lr": scheduler.get_last_lr()[0], "logit_scale": scale}
            if sigmoid:
                record["logit_bias"] = bias
            terms = {name: getattr(outputs, f"{name}_loss", None) for name in ("caption", "npc", "xac")}
            if terms["caption"] is None:
                terms["caption"] = outputs.loss
            terms = {name: value for name, value in terms.items() if value is not None}
            record.update({f"{name}_loss": value.item() for name, value in terms.items()})
            if step % diag_every == 0 or step == 1:
                record.update(term_gradients(terms, groups))
                record.update(pair_statistics(outputs, batch, scale, bias, sigmoid))
            accelerator.backward(outputs.loss)
            if args.max_grad_norm:
                record["grad_norm_total"] = accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm).item()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            clamp_parameter_(accelerator, model, "logit_scale", math.log(args.max_logit_scale))
            record["seconds"] = time.perf_counter() - start
            log.write(json.dumps(record) + "\n")
            log.flush()
            if step % 25 == 0:
                shown = {k: round(v, 4) for k, v in record.items() if k.endswith("_loss") or k.startswith("logit")}
                print(f"step {step}: {shown}", flush=True)
            if step >= args.max_train_steps:
                break
        epoch += 1
    log.close()
    print(f"Written: {output / 'diagnostics.jsonl'}")
    if args.eval_benchmarks:  # the final model on the recipe's benchmarks (e.g. the validation split's)
        from modeling_concept_clip.evaluation import EmbeddingConfig, evaluate_model, read_benchmark_file, save_runs

        plain = accelerator.unwrap_model(model).to_plain().eval()
        plain.save_pretrained(output / "model")
        processor.save_pretrained(output / "model")
        evaluation = evaluate_model(
            plain, processor, read_benchmark_file(args.eval_benchmarks), EmbeddingConfig(progress=False), str(output)
        )
        save_runs([evaluation], output / "results.json")
        print(evaluation.to_markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
