"""Throughput and accuracy of concept extraction (``modeling_concept_clip.concepts``).

Measures captions/s, in one run, on the same captions, of:

* the naive baseline: the full default spaCy pipeline (nothing excluded), ``nlp.pipe`` + ``doc.noun_chunks``,
  one process;
* the default :class:`ConceptExtractor` (parser mode, unneeded components excluded, worker processes that return
  strings), cold (worker start-up timed) and warm (workers already running, as in a long run);
* the same in-process (``n_process=1``), to separate the two speed-ups;
* the tag-pattern mode without the parser (``mode="pos"``);
* the default on captions repeated at a realistic rate (the only row where deduplication helps);
* with `--shards`, `concept-clip-extract` end to end over WebDataset tar shards of the same captions (img2dataset's
  10,000 samples per shard, an image-sized payload per sample), start-up, reading and writing included.

The captions are generated from templates and vocabulary in the style of web alt-text and short re-captions, and
are all distinct. Every mode runs ``--repeats`` times, interleaved with the others, so load from other processes
on a shared machine hits all modes alike; the report gives the best and the median run, the CPU time, the load
average, and each mode's precision/recall on the hand-labelled gold set (``tests/data/concepts_gold.jsonl``).

Run (about 15 minutes on 2 cores with 5 repeats):

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_concepts.py --num-captions 20000 --repeats 5 \
        --output benchmarks/results/bench_concepts.txt

The shard path alone (`--modes none` skips the in-memory modes):

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/bench_concepts.py --num-captions 40000 --repeats 3 \
        --modes none --shards --output benchmarks/results/bench_concepts_shards.txt
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import psutil
import spacy

from modeling_concept_clip.concepts import (
    ConceptExtractor,
    ConceptExtractorConfig,
    resolve_spacy_model,
    score_concepts,
    spacy_model_fingerprint,
)

GOLD = Path(__file__).resolve().parent.parent / "tests" / "data" / "concepts_gold.jsonl"

# Vocabulary of the generated captions (web alt-text and short re-caption style).
# fmt: off
COUNTS = ["a", "a", "a", "the", "two", "three", "four", "several", "a couple of", "a group of", "one", "many"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "brown", "gray", "orange", "pink", "purple", "golden"]
SIZES = ["small", "large", "big", "tiny", "tall", "little", "old", "young", "cute", "happy", "fluffy", "shiny"]
MATERIALS = ["wooden", "metal", "glass", "leather", "plastic", "stone", "brick", "wool", "ceramic", "concrete"]
PEOPLE = ["man", "woman", "boy", "girl", "child", "chef", "surfer", "skier", "businessman", "nurse", "tourist",
    "student", "police officer", "bride", "groom", "farmer", "baby", "teenager", "soldier", "musician"]
ANIMALS = ["dog", "cat", "horse", "cow", "sheep", "bird", "duck", "elephant", "giraffe", "zebra", "bear", "puppy",
    "kitten", "goat", "pigeon", "deer", "squirrel", "fox", "rabbit", "parrot"]
VEHICLES = ["car", "bus", "truck", "bicycle", "motorcycle", "train", "boat", "airplane", "taxi", "van", "scooter",
    "tractor", "sailboat", "pickup truck", "fire truck"]
THINGS = ["couch", "lamp", "table", "chair", "umbrella", "laptop", "kite", "surfboard", "frisbee", "backpack",
    "guitar", "vase", "clock", "bench", "pizza", "cake", "sandwich", "bowl", "cup of coffee", "book", "teddy bear",
    "skateboard", "suitcase", "bottle", "pillow", "basket", "fence", "sign", "bridge", "tree"]
CLOTHES = ["shirt", "dress", "jacket", "hat", "scarf", "coat", "sweater", "helmet", "t-shirt", "skirt", "hoodie",
    "uniform", "apron", "raincoat", "suit"]
PLACES = ["the beach", "a park", "the street", "a kitchen", "a living room", "a field", "the snow", "a forest",
    "a city street", "a lake", "the grass", "a market", "an airport", "a stadium", "a farm", "the ocean",
    "a bedroom", "a restaurant", "a garden", "a parking lot", "a river", "a mountain trail", "a sidewalk"]
VERBS_PERSON = ["holding", "carrying", "riding", "walking", "feeding", "petting", "looking at", "sitting on",
    "standing next to", "playing with", "eating", "pushing", "throwing", "painting", "reading"]
VERBS_ANIMAL = ["lying on", "sitting on", "standing in", "running across", "sleeping on", "drinking from",
    "playing with", "chasing", "eating", "walking along"]
RELATIONS = ["next to", "on top of", "in front of", "behind", "under", "near", "beside", "on", "inside", "above"]
PREFIXES = ["", "", "", "", "", "stock photo of ", "a photo of ", "an image of ", "a close up of ",
    "royalty free photo of ", "picture of ", "a black and white photo of ", "vector illustration of ",
    "an aerial view of "]
SUFFIXES = ["", "", "", "", "", "", " stock photo", " - stock image", " in the background", " at sunset",
    " on a sunny day", " at night", " in the rain", " during the winter"]
# fmt: on


IRREGULAR = {
    "man": "men",
    "woman": "women",
    "child": "children",
    "sheep": "sheep",
    "deer": "deer",
    "police officer": "police officers",
    "cup of coffee": "cups of coffee",
    "fox": "foxes",
}


def _plural(noun: str) -> str:
    if noun in IRREGULAR:
        return IRREGULAR[noun]
    if noun.endswith("man"):
        return noun[:-3] + "men"
    if noun.endswith("y") and noun[-2] not in "aeiou":
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "sh", "ch", "x")) else "s")


def _noun_phrase(rng: random.Random, nouns: list[str], counts: list[str] = COUNTS) -> str:
    count = rng.choice(counts)
    plural = count not in ("a", "the", "one")
    words = []
    living = nouns is PEOPLE or nouns is ANIMALS
    if rng.random() < 0.5:
        words.append(rng.choice(SIZES if living else SIZES[:7]))
    if rng.random() < 0.6 and nouns is not PEOPLE:
        words.append(rng.choice(COLORS))
    if rng.random() < 0.15 and not living:
        words.append(rng.choice(MATERIALS))
    noun = rng.choice(nouns)
    if plural:
        noun = _plural(noun)
    article = count
    if count == "a" and (words[0] if words else noun)[0] in "aeiou":
        article = "an"
    return " ".join([article, *words, noun])


def _caption(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.35:
        subject = _noun_phrase(rng, PEOPLE)
        body = f"{subject} in {_noun_phrase(rng, CLOTHES, ['a', 'a', 'a', 'the'])} {rng.choice(VERBS_PERSON)} {_noun_phrase(rng, ANIMALS + THINGS)}"
    elif kind < 0.6:
        body = f"{_noun_phrase(rng, ANIMALS)} {rng.choice(VERBS_ANIMAL)} {_noun_phrase(rng, THINGS)}"
    elif kind < 0.8:
        body = f"{_noun_phrase(rng, VEHICLES)} parked {rng.choice(RELATIONS)} {_noun_phrase(rng, THINGS + VEHICLES)}"
    else:
        body = f"{_noun_phrase(rng, THINGS)} {rng.choice(RELATIONS)} {_noun_phrase(rng, THINGS)}"
    if rng.random() < 0.4:
        body += f" in {rng.choice(PLACES)}"
    text = rng.choice(PREFIXES) + body + rng.choice(SUFFIXES)
    return text[0].upper() + text[1:] if rng.random() < 0.5 else text


def distinct_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` distinct generated captions."""
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(_caption(rng), None)
    return list(seen)


def with_duplicates(captions: list[str], duplicate_rate: float, seed: int = 1) -> list[str]:
    """The same number of captions, a fraction ``duplicate_rate`` of them repeats of others (web data repeats
    boilerplate captions)."""
    rng = random.Random(seed)
    n_unique = int(len(captions) * (1 - duplicate_rate))
    unique = captions[:n_unique]
    out = unique + [rng.choice(unique) for _ in range(len(captions) - n_unique)]
    rng.shuffle(out)
    return out


def naive_extract(nlp: spacy.language.Language, captions: list[str]) -> list[list[str]]:
    return [[chunk.text for chunk in doc.noun_chunks] for doc in nlp.pipe(captions)]


def load_gold() -> tuple[list[str], list[list[str]]]:
    rows = [json.loads(line) for line in GOLD.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [row["caption"] for row in rows], [row["concepts"] for row in rows]


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (the extractor's workers), user + system."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


@dataclass
class Mode:
    label: str
    config: ConceptExtractorConfig | None  # None: the naive baseline
    warm: bool = False  # start the workers on other captions before the clock starts
    captions: str = "distinct"  # or "repeated"
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    gold: dict[str, float] | None = None


def run_mode(mode: Mode, data: dict[str, list[str]], nlp_full: spacy.language.Language) -> None:
    captions = data[mode.captions]
    if mode.config is None:
        cpu, start = _cpu_seconds(), time.perf_counter()
        naive_extract(nlp_full, captions)
        mode.walls.append(time.perf_counter() - start)
        mode.cpus.append(_cpu_seconds() - cpu)
        return
    extractor = ConceptExtractor(mode.config)
    extractor.extract(data["gold"])  # in-process: loads the parent's pipeline, as any first call would
    if mode.warm:
        extractor.extract(data["warmup"])
    cpu, start = _cpu_seconds(), time.perf_counter()
    extractor.extract(captions)
    wall = time.perf_counter() - start
    mode.cpus.append(_cpu_seconds() - cpu)  # before close(): the workers are still alive to be measured
    extractor.close()
    mode.walls.append(wall)


def write_shards(folder: Path, captions: list[str], shard_size: int, image_bytes: int) -> list[Path]:
    """Tar shards as img2dataset writes them: per sample `<key>.jpg` (random bytes of an image's size), `.txt`, `.json`."""
    rng = random.Random(0)
    paths = []
    for shard, start in enumerate(range(0, len(captions), shard_size)):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for index, caption in enumerate(captions[start : start + shard_size]):
                key = f"{shard:05d}{index:04d}"
                meta = json.dumps({"key": key, "caption": caption, "status": "success"})
                for extension, payload in (
                    ("jpg", rng.randbytes(image_bytes)),
                    ("txt", caption.encode("utf-8")),
                    ("json", meta.encode("utf-8")),
                ):
                    info = tarfile.TarInfo(f"{key}.{extension}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        paths.append(path)
    return paths


def _children_cpu_seconds() -> float:
    """User + system CPU time of the finished child processes and their own finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_shards(captions: list[str], repeats: int, shard_size: int, image_bytes: int) -> list[str]:
    """`concept-clip-extract` over tar shards of `captions`, as a user runs it (a new process, default settings),
    and over the first half of the shards: the difference in CPU time is the cost of the extra captions alone,
    without the fixed start-up (imports, one pipeline per worker)."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        shards = write_shards(Path(tmp), captions, shard_size, image_bytes)
        size = sum(path.stat().st_size for path in shards)
        half = len(shards) // 2
        runs = {"all": (len(shards), len(captions)), "half": (half, min(len(captions), half * shard_size))}
        walls, inner, cpus = {k: [] for k in runs}, {k: [] for k in runs}, {k: [] for k in runs}
        for repeat in range(repeats):
            for name, (count, n) in runs.items():
                pattern = f"{tmp}/{{00000..{count - 1:05d}}}.tar"
                command = [sys.executable, "-m", "modeling_concept_clip.commands.extract_concepts", "--input", pattern]
                command += ["--output_dir", str(Path(tmp) / f"out-{name}-{repeat}"), "--disable_progress_bar"]
                cpu, start = _children_cpu_seconds(), time.perf_counter()
                result = subprocess.run(command, capture_output=True, text=True, check=True)
                walls[name].append(time.perf_counter() - start)
                cpus[name].append(_children_cpu_seconds() - cpu)
                inner[name].append(json.loads(result.stdout)["captions_per_second_this_run"])
                print(f"repeat {repeat + 1}: {count} shards: {n / walls[name][-1]:,.0f} captions/s", flush=True)
        n, n_half = runs["all"][1], runs["half"][1]
        marginal = [(n - n_half) / (full - part) for full, part in zip(cpus["all"], cpus["half"])]
        lines += [
            "",
            f"## `concept-clip-extract` over WebDataset shards ({len(shards)} shards of {shard_size} samples, "
            f"{size / 2**20:.0f} MiB, {image_bytes} bytes of image per sample; {repeats} runs of each size)",
            "",
            f"- command: `concept-clip-extract --input '<tmp>/{{00000..{len(shards) - 1:05d}}}.tar' --output_dir "
            f"<tmp>/out` (default settings: one worker per core), and the same over the first {half} shards",
            "",
            "| what | best | median |",
            "|---|---|---|",
            f"| whole command, captions/s (start-up, pipeline loads, reading, writing) | {n / min(walls['all']):,.0f} | "
            f"{statistics.median(n / wall for wall in walls['all']):,.0f} |",
            f"| extraction loop, captions/s (summary's captions_per_second_this_run) | {max(inner['all']):,.0f} | "
            f"{statistics.median(inner['all']):,.0f} |",
            f"| whole command, captions per CPU-second (all its processes) | {n / min(cpus['all']):,.0f} | "
            f"{statistics.median(n / cpu for cpu in cpus['all']):,.0f} |",
            f"| start-up, CPU-seconds (extrapolated to 0 captions) | "
            f"{min(c - n / m for c, m in zip(cpus['all'], marginal)):.1f} | "
            f"{statistics.median(c - n / m for c, m in zip(cpus['all'], marginal)):.1f} |",
            f"| per core: captions per CPU-second beyond start-up ({n - n_half} captions more) | {max(marginal):,.0f} | "
            f"{statistics.median(marginal):,.0f} |",
            "",
            "Captions per CPU-second is the rate of one fully used core, whatever else the machine runs; wall-clock "
            "rates fall when other processes share the cores (see the load average).",
        ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-captions", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5, help="runs of each mode, interleaved")
    parser.add_argument("--duplicate-rate", type=float, default=0.3, help="for the labelled repeated-captions row")
    parser.add_argument("--spacy-model", default=None)
    parser.add_argument("--output", type=Path, default=None, help="also write the report here")
    parser.add_argument("--modes", choices=["all", "none"], default="all", help="'none': only --shards")
    parser.add_argument("--shards", action="store_true", help="also time concept-clip-extract over tar shards")
    parser.add_argument("--shard-size", type=int, default=10_000, help="samples per shard (img2dataset's default)")
    parser.add_argument("--image-bytes", type=int, default=16_000, help="image payload per sample")
    args = parser.parse_args()

    model = resolve_spacy_model(args.spacy_model)
    gold_captions, gold_concepts = load_gold()
    pool = distinct_captions(args.num_captions + 5000)
    captions, warmup = pool[: args.num_captions], pool[args.num_captions :]
    assert len(set(captions)) == len(captions) and not set(captions) & set(warmup)
    data = {
        "distinct": captions,
        "repeated": with_duplicates(captions, args.duplicate_rate),
        "warmup": warmup,
        "gold": gold_captions,
    }
    sm = args.spacy_model
    modes = [
        Mode("naive: full default pipeline, `nlp.pipe` + `noun_chunks`, 1 process", None),
        Mode("default `ConceptExtractor()`, cold (worker start-up included)", ConceptExtractorConfig(spacy_model=sm)),
        Mode("default `ConceptExtractor()`, warm workers", ConceptExtractorConfig(spacy_model=sm), warm=True),
        Mode("parser, in-process (`n_process=1`)", ConceptExtractorConfig(spacy_model=sm, n_process=1)),
        Mode('`mode="pos"` (no parser), warm workers', ConceptExtractorConfig(spacy_model=sm, mode="pos"), warm=True),
        Mode(
            f"default, warm workers, {args.duplicate_rate:.0%} repeated captions (dedup)",
            ConceptExtractorConfig(spacy_model=sm),
            warm=True,
            captions="repeated",
        ),
    ]
    if args.modes == "none":
        modes = []
    for mode in modes:
        if mode.config is not None:
            with ConceptExtractor(replace(mode.config, n_process=1)) as extractor:
                mode.gold = score_concepts(extractor.extract(gold_captions), gold_concepts)

    nlp_full = spacy.load(model)
    naive_extract(nlp_full, gold_captions)  # warm-up
    load_before = os.getloadavg()
    started = time.perf_counter()
    for repeat in range(args.repeats):
        for mode in modes:
            run_mode(mode, data, nlp_full)
            print(f"repeat {repeat + 1}: {mode.label}: {len(captions) / mode.walls[-1]:,.0f} captions/s", flush=True)
    shard_lines = run_shards(captions, args.repeats, args.shard_size, args.image_bytes) if args.shards else []
    load_after = os.getloadavg()

    n = len(captions)
    lines = [
        f"# Concept extraction benchmark ({n} distinct generated captions, {args.repeats} interleaved runs per mode)",
        "",
        f"- machine: {platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores available, "
        f"Python {platform.python_version()}, spaCy {spacy.__version__}, pipeline {spacy_model_fingerprint(model)}",
        f"- command: `{' '.join(['python', *sys.argv])}`",
        f"- load average (1/5/15 min) before: {'/'.join(f'{x:.2f}' for x in load_before)}, after: "
        f"{'/'.join(f'{x:.2f}' for x in load_after)}; total {time.perf_counter() - started:.0f} s",
        f"- naive pipeline: `{'+'.join(nlp_full.pipe_names)}`; captions: "
        f"{statistics.mean(len(c.split()) for c in captions):.1f} words on average",
        f"- gold set: {len(gold_captions)} hand-labelled captions; precision/recall micro-averaged over concepts, "
        "matched after normalisation",
    ]
    if modes:
        naive_best = n / min(modes[0].walls)
        lines += [
            "",
            "| mode | best captions/s | median captions/s | best vs naive | CPU s per 1k captions | gold P | gold R |",
            "|---|---|---|---|---|---|---|",
        ]
        for mode in modes:
            rates = sorted(n / wall for wall in mode.walls)
            gold = f"{mode.gold['precision']:.3f} | {mode.gold['recall']:.3f}" if mode.gold else "- | -"
            lines.append(
                f"| {mode.label} | {rates[-1]:,.0f} | {statistics.median(rates):,.0f} | {rates[-1] / naive_best:.2f}x "
                f"| {1000 * statistics.median(mode.cpus) / n:.2f} | {gold} |"
            )
        lines += [
            "",
            "Wall-clock rates over the same captions; 'best' is the fastest of the interleaved runs (the machine may "
            "be shared: see the load average), 'median' the middle one. 'cold' includes spawning the worker "
            "processes and loading a pipeline in each; 'warm' workers were started on other captions first, as in a "
            "long run over millions of captions. CPU seconds count this process and its workers during the timed "
            "call (for 'cold', their start-up too). The generated captions are all distinct, so deduplication plays "
            "no part except in the last row, which repeats captions at the stated rate, as web data does.",
        ]
    lines += shard_lines
    report = "\n".join(lines)
    print(report)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
