"""The package's public names and its import cost."""

import subprocess
import sys

import modeling_concept_clip


def test_every_public_name_imports():
    assert sorted(modeling_concept_clip.__all__) == sorted(modeling_concept_clip._MODULE_OF)
    for name in modeling_concept_clip.__all__:
        assert getattr(modeling_concept_clip, name) is not None


def test_importing_the_package_does_not_import_torch():
    code = "import sys, modeling_concept_clip, modeling_concept_clip.concepts; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_setup_cfg_installs_every_file_of_the_package():
    """Every file of `modeling_concept_clip/` and `model_cards/` is a module of a listed package or matches its
    package data (what setuptools puts in the wheel; `make check-wheel` builds and installs the real one)."""
    import configparser
    from fnmatch import fnmatch
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    config = configparser.ConfigParser()
    config.read(root / "setup.cfg")
    options = config["options"]
    packages = options["packages"].split()
    package_dir = dict(line.split(" = ") for line in options["package_dir"].strip().splitlines() if " = " in line)
    data = {name: globs.split() for name, globs in config["options.package_data"].items()}

    def folder(package: str) -> Path:
        return root / package_dir.get(package, package.replace(".", "/"))

    installed = set()
    for package in packages:
        installed.update(folder(package).glob("*.py"))
        for pattern in data.get(package, []):
            installed.update(path for path in folder(package).glob("**/*") if fnmatch(
                str(path.relative_to(folder(package))), pattern))  # fmt: skip
    sources = {path for top in ("modeling_concept_clip", "model_cards") for path in (root / top).rglob("*")
               if path.is_file() and "__pycache__" not in path.parts}  # fmt: skip
    assert sorted(str(path.relative_to(root)) for path in sources - installed) == []
