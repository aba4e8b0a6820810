#!/usr/bin/env python
"""The package as `pip install .` gives it, used from a folder outside the repository (`make check-wheel`).

An editable install (what `make` does) reads the source tree, so it hides what a wheel leaves out: package data,
sub-packages missing from `setup.cfg`, imports that work only with the repository root on `sys.path`. This check:

1. builds the wheel from the working tree's files (tracked and untracked-but-not-ignored, copied to a temporary
   folder, so that no stale `build/` folder can add files), offline (`--no-build-isolation`);
2. compares its files with the source: every file of `modeling_concept_clip/` and `model_cards/` (installed as
   `modeling_concept_clip.model_cards`) except tests' caches must be in it;
3. installs it with `--no-deps` into a fresh virtual environment whose dependencies come from `.venv`'s
   site-packages through a `.pth` file (a plain path: `.venv`'s own `.pth` files, among them the editable install,
   are not read, so `modeling_concept_clip` can only come from the wheel);
4. from an empty folder, without `PYTHONPATH`: imports the package (from the fresh environment, the repository not
   on `sys.path`), runs every console script of the wheel with `--help`, writes a small model with
   `concept-clip-init` and trains it 2 steps with `concept-clip-train` on images and captions without concepts
   (spaCy extracts them), evaluated on a SugarCrepe-style probe at the end (the metric modules are package data)
   and exported with its model card (the template is package data).

Run from the repository root: `.venv/bin/python .ci/check_wheel.py` (exit status 0: the wheel works).
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Source folders of the wheel and where their files go in it (setup.cfg's package_dir).
SOURCES = {"modeling_concept_clip": "modeling_concept_clip", "model_cards": "modeling_concept_clip/model_cards"}


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> str:
    """Run `command`; on failure print its output and stop the check."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    shown = " ".join([Path(command[0]).name, *command[1:3]])[:60]
    print(f"  {time.perf_counter() - start:5.1f} s  {shown}{' ...' if len(command) > 3 else ''}", flush=True)
    if result.returncode != 0:
        sys.exit(
            f"FAILED (exit {result.returncode}): {' '.join(command)}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"
        )
    return result.stdout + result.stderr


def source_files() -> list[str]:
    """The working tree's files that git does not ignore (tracked or not yet), relative to the root."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sorted({name for name in listed.split("\0") if name and (ROOT / name).is_file()})


def build_wheel(work: Path) -> Path:
    source = work / "source"
    for name in source_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w",
               str(work / "dist"), str(source)]  # fmt: skip
    run(command, cwd=work, env=dict(os.environ))
    (wheel,) = (work / "dist").glob("modeling_concept_clip-*.whl")
    return wheel


def check_wheel_contents(wheel: Path) -> None:
    """Every source file of the package is in the wheel, at its installed path."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        SOURCES[name.split("/", 1)[0]] + "/" + name.split("/", 1)[1]
        for name in source_files()
        if name.split("/", 1)[0] in SOURCES
    }
    missing = sorted(expected - names)
    if missing:
        sys.exit(f"FAILED: the wheel {wheel.name} lacks {len(missing)} file(s) of the source: {missing}")
    print(f"  the wheel has all {len(expected)} files of modeling_concept_clip/ and model_cards/")


def fresh_environment(work: Path, wheel: Path) -> Path:
    """A new virtual environment with the wheel and, through a `.pth` file, `.venv`'s dependencies."""
    environment = work / "venv"
    venv.create(environment, with_pip=False, symlinks=True)
    python = environment / "bin" / "python"
    site_packages = Path(
        subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       capture_output=True, text=True, check=True).stdout.strip()
    )  # fmt: skip
    # A plain path line: the folder joins sys.path after the environment's own site-packages, and its .pth files
    # (the editable install among them) are not executed.
    (site_packages / "zz_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)]
    run(command, cwd=work, env=dict(os.environ))
    return environment


def write_data(folder: Path, rows: int = 8) -> None:
    """JSON Lines with relative image paths and captions, no concepts; a SugarCrepe-style probe on its images."""
    from PIL import Image

    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30), "yellow": (230, 220, 30)}
    shapes = ["circle", "square", "star", "triangle"]
    (folder / "images").mkdir(parents=True)
    lines, probes = [], {}
    for i in range(rows):
        left, right = list(colours)[i % 4], list(colours)[(i + 1) % 4]
        image = Image.new("RGB", (32, 32), colours[left])
        image.paste(Image.new("RGB", (16, 32), colours[right]), (16, 0))
        image.save(folder / "images" / f"{i}.png")
        caption = f"a {left} {shapes[i % 4]} next to a {right} {shapes[(i + 2) % 4]}"
        lines.append(json.dumps({"image": f"images/{i}.png", "caption": caption}))
        probes[str(i)] = {"filename": f"{i}.png", "caption": caption, "negative_caption": f"a {right} {left} thing"}
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "images" / "swap_att.json").write_text(json.dumps(probes))
    benchmark = {"kind": "sugarcrepe", "name": "probes", "data_dir": "data/images", "subsets": None}
    (folder / "benchmarks.json").write_text(json.dumps([benchmark]))


def console_scripts() -> list[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    lines = config["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=", 1)[0].strip() for line in lines]


def check_installed(environment: Path, work: Path) -> None:
    bin_dir = environment / "bin"
    folder = work / "user"  # outside the repository: nothing of it can be on sys.path
    folder.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}")
    code = ("import json, sys, modeling_concept_clip as m; "
            "print(json.dumps({'file': m.__file__, 'path': sys.path}))")  # fmt: skip
    where = json.loads(run([str(bin_dir / "python"), "-c", code], cwd=folder, env=env).strip().splitlines()[-1])
    if not Path(where["file"]).resolve().is_relative_to(environment.resolve()):
        sys.exit(f"FAILED: modeling_concept_clip was imported from {where['file']}, not from the fresh environment")
    if any(entry and Path(entry).resolve() == ROOT for entry in where["path"]):
        sys.exit(f"FAILED: the repository root {ROOT} is on sys.path of the fresh environment")
    for script in console_scripts():
        if not (bin_dir / script).is_file():
            sys.exit(f"FAILED: the wheel installed no console script {script}")
        output = run([str(bin_dir / script), "--help"], cwd=folder, env=env)
        if "usage:" not in output:
            sys.exit(f"FAILED: {script} --help printed no usage:\n{output[-2000:]}")
    write_data(folder / "data")
    run(["concept-clip-init", "--train_file", "data/train.jsonl", "--output_dir", "small-clip",
         "--image_size", "32", "--width", "32", "--layers", "2"], cwd=folder, env=env)  # fmt: skip
    run(["concept-clip-train", "--model_name_or_path", "small-clip", "--train_file", "data/train.jsonl",
         "--output_dir", "c2lip", "--per_device_train_batch_size", "4", "--max_train_steps", "2",
         "--learning_rate", "1e-3", "--report_to", "none", "--eval_benchmarks", "data/benchmarks.json"],
        cwd=folder, env=env)  # fmt: skip
    for name in ("model.safetensors", "config.json", "README.md", "training_args.json", "results.json"):
        if not (folder / "c2lip" / name).is_file():
            sys.exit(f"FAILED: the training run from the wheel wrote no c2lip/{name}")


def main() -> None:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="c2lip-wheel-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work)
        check_wheel_contents(wheel)
        environment = fresh_environment(work, wheel)
        check_installed(environment, work)
    print(f"check-wheel: the wheel installs and works outside the repository ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
