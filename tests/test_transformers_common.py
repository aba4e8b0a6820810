"""transformers' own common model tests (`ModelTesterMixin`) pass and skip on the Concept classes exactly what they
pass and skip on CLIPModel and SiglipModel (the tests, the subset and its reasons: `transformers_common.py`).

They found two differences, both fixed: `forward`'s `**kwargs` lacked the `Unpack[TransformersKwargs]` annotation
(transformers then decides that the model cannot return attentions, and skips the check), and `from_pretrained`
initialised missing weights otherwise (transformers treated the classes as custom code).
"""

import pytest
from transformers import CLIPModel, SiglipModel

from modeling_concept_clip import ConceptCLIPModel, ConceptSiglipModel

from .transformers_common import run_common_tests

PAIRS = {"clip": (CLIPModel, ConceptCLIPModel), "siglip": (SiglipModel, ConceptSiglipModel)}


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_concept_class_passes_and_skips_what_its_base_class_does(model_type):
    base, concept = PAIRS[model_type]
    theirs = run_common_tests(base, model_type)
    ours = run_common_tests(concept, model_type)
    # Skip reasons may name the class: read them with the base class's name.
    names = {
        f"{concept.__module__}.{concept.__name__}": f"{base.__module__}.{base.__name__}",
        concept.__name__: base.__name__,
    }
    for name, outcome in ours.items():
        for old, new in names.items():
            outcome = outcome.replace(old, new)
        ours[name] = outcome
    failed = {name: outcome for name, outcome in theirs.items() if outcome.startswith("failed")}
    assert not failed, f"the subset must run on {base.__name__} itself: {failed}"
    differ = {
        name: (theirs.get(name), ours.get(name))
        for name in theirs.keys() | ours.keys()
        if theirs.get(name) != ours.get(name)
    }
    assert not differ, f"{len(differ)} tests end otherwise on {concept.__name__} than on {base.__name__}: {differ}"
    passed = sum(outcome.startswith("passed") for outcome in ours.values())
    print(
        f"{concept.__name__}: {len(ours)} common tests, {passed} passed, {len(ours) - passed} skipped, as on {base.__name__}"
    )
    assert passed >= 40
