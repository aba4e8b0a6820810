"""How often a batch's noun phrases repeat: per process, across processes, and what global deduplication would save.

    python benchmarks/bench_concept_duplicates.py --captions captions.txt   # one caption per line (or JSON Lines)

Concepts come from the project's spaCy extractor (default settings, parser mode, at most 8 per caption, as the
collator keeps). A concept's text is encoded once per distinct token sequence; the proxy for "same tokens" here is
the lowercased, single-spaced text (CLIP's and SigLIP's tokenizers lowercase). Each repeat draws a seeded shuffle of
the captions (training shuffles; caption files are often sorted by topic), takes one global batch of
`--processes x --per_process` captions and splits it into per-process batches. Reported, as means over repeats:

- concepts per image, and distinct concepts per process batch (what each process encodes today);
- distinct concepts of the global batch (what a global deduplication would encode in total);
- the saving of global deduplication: 1 - global distinct / sum of per-process distinct;
- the share of concepts whose normalised identity (`concept_id`, "shared" positives) repeats in the global batch.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path

from modeling_concept_clip.concepts import ConceptExtractor, ConceptExtractorConfig, concept_id


def read_captions(path: Path) -> list[str]:
    captions = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            line = json.loads(line).get("caption", "")
        if line:
            captions.append(line)
    return captions


def encoding_key(concept: str) -> str:
    return " ".join(concept.lower().split())


def batch_statistics(concepts: list[list[str]], processes: int, per_process: int) -> dict[str, float]:
    shards = [concepts[p * per_process : (p + 1) * per_process] for p in range(processes)]
    flat = [c for rows in concepts for c in rows]
    local_distinct = [len({encoding_key(c) for rows in shard for c in rows}) for shard in shards]
    global_distinct = len({encoding_key(c) for c in flat})
    identities = [concept_id(c) for c in flat]
    repeated = sum(count for count in _counts(identities).values() if count > 1)
    return {
        "concepts_per_image": len(flat) / len(concepts),
        "distinct_per_process": statistics.mean(local_distinct),
        "distinct_per_process_per_image": sum(local_distinct) / len(concepts),
        "global_distinct": global_distinct,
        "global_distinct_per_image": global_distinct / len(concepts),
        "global_dedup_saving": 1 - global_distinct / sum(local_distinct),
        "shared_identity_fraction": repeated / len(flat),
    }


def _counts(values):
    counts = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=Path, required=True, help="one caption per line, or JSON Lines")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--per_process", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    captions = read_captions(args.captions)
    global_batch = args.processes * args.per_process
    if len(captions) < global_batch:
        raise SystemExit(
            f"{args.captions} has {len(captions)} captions, fewer than one global batch ({global_batch})."
        )
    with ConceptExtractor(ConceptExtractorConfig()) as extractor:
        all_concepts = extractor.extract(captions, on_invalid="empty")
    rng = random.Random(args.seed)
    runs = []
    for _ in range(args.repeats):
        order = rng.sample(range(len(captions)), global_batch)
        runs.append(batch_statistics([all_concepts[i] for i in order], args.processes, args.per_process))
    print(
        f"{len(captions)} captions from {args.captions.name}; {args.repeats} seeded draws of one global batch of "
        f"{global_batch} = {args.processes} processes x {args.per_process}; means (min-max) over draws\n"
    )
    print("| quantity | value |")
    print("|---|---|")
    labels = {
        "concepts_per_image": "concepts per image",
        "distinct_per_process": f"distinct concepts per process batch ({args.per_process} images)",
        "distinct_per_process_per_image": "distinct per image, per-process deduplication (encoded today)",
        "global_distinct": f"distinct concepts of the global batch ({global_batch} images)",
        "global_distinct_per_image": "distinct per image, global deduplication",
        "global_dedup_saving": "concept encodings saved by global over per-process deduplication",
        "shared_identity_fraction": "concepts whose identity repeats in the global batch",
    }
    for key, label in labels.items():
        values = [run[key] for run in runs]
        fmt = ".1%" if key in ("global_dedup_saving", "shared_identity_fraction") else ".2f"
        print(f"| {label} | {statistics.mean(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}}) |")


if __name__ == "__main__":
    main()
