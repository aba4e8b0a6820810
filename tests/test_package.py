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
