"""ConceptCLIPModel / ConceptSiglipModel against plain CLIPModel / SiglipModel and the naive reference."""

import inspect
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, CLIPModel, SiglipModel, pipeline

from modeling_concept_clip import ConceptCLIPModel, ConceptLossConfig, ConceptSiglipModel
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor

from .c2lip_reference import naive_c2lip_loss

CLASSES = {"clip": (ConceptCLIPModel, CLIPModel), "siglip": (ConceptSiglipModel, SiglipModel)}
CAPTIONS = ["a big red circle and a blue square", "a cat next to a dog", "the man on the left", "a yellow star"]
CONCEPTS = ["a big red circle", "a blue square", "a cat", "a dog", "the man", "a yellow star", "a cat"]
CONCEPT_IMAGE = [0, 0, 1, 1, 2, 3, 2]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny(request, tmp_path_factory):
    """A plain tiny checkpoint folder (with processor), and a batch with concepts."""
    model_type = request.param
    model, processor = build_tiny_model_and_processor(model_type, seed=3)
    folder = tmp_path_factory.mktemp(model_type)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    padding = "max_length" if model_type == "siglip" else True
    captions = processor.tokenizer(CAPTIONS, padding=padding, return_tensors="pt")
    concepts = processor.tokenizer(CONCEPTS, padding=padding, return_tensors="pt")
    batch = dict(
        input_ids=captions.input_ids,
        attention_mask=captions.attention_mask,
        pixel_values=torch.randn(len(CAPTIONS), 3, 32, 32, generator=torch.Generator().manual_seed(0)),
    )
    concept_batch = dict(
        concept_input_ids=concepts.input_ids,
        concept_attention_mask=concepts.attention_mask,
        concept_image_index=torch.tensor(CONCEPT_IMAGE),
    )
    return model_type, folder, batch, concept_batch


def load(tiny, **kwargs):
    model_type, folder, _, _ = tiny
    concept_cls, plain_cls = CLASSES[model_type]
    concept_model = concept_cls.from_pretrained(folder, dtype=torch.float32, **kwargs)
    plain_model = plain_cls.from_pretrained(folder, dtype=torch.float32)
    return concept_model, plain_model


def test_loads_plain_checkpoint_with_no_missing_keys(tiny):
    model_type, folder, _, _ = tiny
    concept_cls, _ = CLASSES[model_type]
    model, info = concept_cls.from_pretrained(
        folder, output_loading_info=True, concept_config=ConceptLossConfig(xac_weight=0.5)
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.concept_config.xac_weight == 0.5
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in load(tiny)[1].parameters())


def test_without_concepts_outputs_equal_base_class(tiny):
    concept_model, plain_model = load(tiny)
    _, _, batch, _ = tiny
    with torch.no_grad():
        ours = concept_model(**batch, return_loss=True)
        theirs = plain_model(**batch, return_loss=True)
    assert type(ours) is type(theirs)
    for key in ("loss", "logits_per_image", "logits_per_text", "text_embeds", "image_embeds"):
        assert torch.equal(ours[key], theirs[key]), key


def test_forward_signature_keeps_the_base_class_parameters(tiny):
    """transformers reads `forward`'s signature (e.g. the `Unpack[TransformersKwargs]` annotation of `**kwargs`, to
    decide whether a model takes `output_attentions`): every base parameter is there, annotated the same."""
    concept_cls, plain_cls = CLASSES[tiny[0]]
    ours = inspect.signature(concept_cls.forward).parameters
    for name, theirs in inspect.signature(plain_cls.forward).parameters.items():
        assert name in ours, name
        assert (ours[name].kind, ours[name].default, ours[name].annotation) == (
            theirs.kind, theirs.default, theirs.annotation
        ), name  # fmt: skip
    assert list(ours)[-1] == "kwargs"


def test_missing_weights_are_initialised_as_by_the_base_class(tiny, tmp_path):
    """Weights absent from a checkpoint (here the first layer of both towers and the projections or the SigLIP
    head) get exactly the values the base class's `from_pretrained` gives them, from the same seed."""
    model_type, folder, _, _ = tiny
    concept_cls, plain_cls = CLASSES[model_type]
    weights = load_file(folder / "model.safetensors")
    dropped = [
        name
        for name in weights
        if ".layers.0." in name or "projection" in name or "vision_model.head." in name
    ]  # fmt: skip
    assert any("self_attn" in name for name in dropped) and any("mlp" in name for name in dropped)
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    kept = {name: tensor for name, tensor in weights.items() if name not in dropped}
    save_file(kept, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = {}
    for cls in (plain_cls, concept_cls):
        torch.manual_seed(0)
        model, info = cls.from_pretrained(tmp_path, dtype=torch.float32, output_loading_info=True)
        assert sorted(info["missing_keys"]) == sorted(dropped)
        loaded[cls] = model.state_dict()
    different = [name for name in dropped if not torch.equal(loaded[plain_cls][name], loaded[concept_cls][name])]
    assert not different, f"{len(different)} of {len(dropped)} missing weights initialised otherwise: {different}"


def test_with_concepts_matches_naive_reference(tiny):
    model_type, _, batch, concept_batch = tiny
    config = ConceptLossConfig(npc_weight=1.0, xac_weight=0.5, tau=2.0, concept_positives="owner")
    concept_model, plain_model = load(tiny, concept_config=config)
    out = concept_model(**batch, **concept_batch, return_loss=True)
    # Caption logits as the plain model computes them.
    with torch.no_grad():
        plain = plain_model(**batch)
    torch.testing.assert_close(out.logits_per_image, plain.logits_per_image, atol=1e-5, rtol=0)
    # Concepts are the text tower's embeddings of the concept texts.
    with torch.no_grad():
        expected_concepts = F.normalize(
            plain_model.get_text_features(
                input_ids=concept_batch["concept_input_ids"], attention_mask=concept_batch["concept_attention_mask"]
            ).pooler_output,
            dim=-1,
        )
    torch.testing.assert_close(out.concept_embeds, expected_concepts, atol=1e-6, rtol=0)
    bias = concept_model.logit_bias if model_type == "siglip" else 0.0
    naive = naive_c2lip_loss(
        out.image_embeds, out.text_embeds, out.concept_embeds, out.image_token_embeds,
        concept_batch["concept_image_index"], None, concept_model.logit_scale.exp(), bias,
        concept_model.loss_form, "owner", tau=2.0, npc_w=1.0, xac_w=0.5,
    )  # fmt: skip
    for mine, theirs in zip((out.loss, out.caption_loss, out.npc_loss, out.xac_loss), naive):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.caption_loss, plain_model(**batch, return_loss=True).loss, atol=1e-5, rtol=0)
    out.loss.backward()
    assert all(p.grad is not None for p in concept_model.parameters() if p.requires_grad)


def test_shared_positives_default_derives_ids_from_tokens(tiny):
    _, _, batch, concept_batch = tiny
    concept_model, _ = load(tiny, concept_config=ConceptLossConfig(concept_positives="shared"))
    derived = concept_model(**batch, **concept_batch, return_loss=True)
    # "a cat" appears for images 1 and 2: explicit ids that say so give the same loss.
    explicit_ids = torch.tensor([0, 1, 2, 3, 4, 5, 2])
    explicit = concept_model(**batch, **concept_batch, concept_ids=explicit_ids, return_loss=True)
    torch.testing.assert_close(derived.loss, explicit.loss, atol=1e-6, rtol=0)
    distinct = concept_model(**batch, **concept_batch, concept_ids=torch.arange(7), return_loss=True)
    assert abs(distinct.npc_loss.item() - derived.npc_loss.item()) > 1e-5


@pytest.mark.parametrize("tiny", ["clip"], indirect=True)
def test_clip_patch_tokens_use_the_cls_path(tiny):
    """Each CLIP patch goes through post_layernorm and visual_projection, as the CLS token does."""
    _, _, batch, concept_batch = tiny
    model, _ = load(tiny)
    with torch.no_grad():
        out = model(**batch, **concept_batch)
        hidden = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        expected = model.visual_projection(model.vision_model.post_layernorm(hidden))
    assert out.image_token_embeds.shape == (4, 16, model.config.projection_dim)
    torch.testing.assert_close(out.image_token_embeds, F.normalize(expected[:, 1:], dim=-1))
    # The same path applied to the CLS position is the image embedding.
    torch.testing.assert_close(F.normalize(expected[:, 0], dim=-1), out.image_embeds)


@pytest.mark.parametrize("tiny", ["siglip"], indirect=True)
def test_siglip_patch_tokens_follow_the_release_head_formula(tiny):
    """value slice of in_proj -> out_proj -> h + mlp(layernorm(h)), computed by hand from the weights."""
    _, _, batch, concept_batch = tiny
    model, _ = load(tiny)
    head = model.vision_model.head
    dim = head.attention.embed_dim
    with torch.no_grad():
        out = model(**batch, **concept_batch)
        hidden = model.vision_model(pixel_values=batch["pixel_values"]).last_hidden_state
        value = hidden @ head.attention.in_proj_weight[2 * dim :].T + head.attention.in_proj_bias[2 * dim :]
        h = value @ head.attention.out_proj.weight.T + head.attention.out_proj.bias
        expected = h + head.mlp(head.layernorm(h))
    assert out.image_token_embeds.shape == (4, 16, dim)
    torch.testing.assert_close(out.image_token_embeds, F.normalize(expected, dim=-1), atol=1e-5, rtol=0)


def test_save_pretrained_exports_a_plain_checkpoint(tiny, tmp_path):
    model_type, folder, batch, concept_batch = tiny
    concept_cls, plain_cls = CLASSES[model_type]
    model = concept_cls.from_pretrained(folder, dtype=torch.float32)
    # Train one step so that the export differs from the starting weights.
    model(**batch, **concept_batch, return_loss=True).loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    model.save_pretrained(tmp_path)
    from transformers import AutoProcessor

    AutoProcessor.from_pretrained(folder).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == [plain_cls.__name__]
    assert config["model_type"] == model_type
    original = json.loads((folder / "config.json").read_text())
    assert set(config) == set(original), "the export must not add or drop config keys"
    assert not any("concept" in key for key in json.dumps(config).split('"'))
    weights = sorted(p.name for p in tmp_path.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".pth"})
    assert weights == ["model.safetensors"]

    plain, info = plain_cls.from_pretrained(tmp_path, output_loading_info=True, dtype=torch.float32)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    auto = AutoModel.from_pretrained(tmp_path)
    assert type(auto) is plain_cls
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits_per_image, model(**batch).logits_per_image, rtol=0, atol=0)
    classifier = pipeline("zero-shot-image-classification", model=str(tmp_path))
    result = classifier(Image.new("RGB", (40, 40), (255, 0, 0)), candidate_labels=["circle", "square"])
    assert {r["label"] for r in result} == {"circle", "square"}


def test_to_plain_shares_parameters(tiny):
    model, _ = load(tiny)
    plain = model.to_plain()
    assert type(plain) is CLASSES[tiny[0]][1]
    assert plain.logit_scale is model.logit_scale
    with torch.no_grad():
        model.logit_scale.fill_(1.23)
    assert plain.logit_scale.item() == pytest.approx(1.23)
    assert not hasattr(plain, "concept_config") and hasattr(model, "concept_config")


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(concept_image_index=torch.tensor([0, 0, 1, 1, 2, 3, 4])), r"concept_image_index must be in \[0, 4\)"),
        (dict(concept_image_index=torch.tensor([0, 0, 1, 1, 2, 3, -1])), r"must be in \[0, 4\)"),
        (dict(concept_image_index=torch.tensor([0, 1, 2])), "concept_image_index has 3 entries"),
        (dict(concept_image_index=torch.tensor([0.0, 0, 1, 1, 2, 3, 2])), "must be an integer"),
        (dict(concept_ids=torch.arange(5)), "concept_ids has 5 entries"),
        (dict(concept_input_ids=None, concept_attention_mask=None), "given without concept_input_ids"),
        (dict(concept_image_index=None), "concept_image_index is required"),
        (dict(concept_input_ids=torch.zeros(0, 5, dtype=torch.long), concept_attention_mask=None,
              concept_image_index=torch.zeros(0, dtype=torch.long)), "concept batch is empty"),
        (dict(concept_attention_mask=torch.ones(7, 2, dtype=torch.long)), "concept_attention_mask has shape"),
        (dict(concept_input_ids=torch.ones(7, 3)), "concept_input_ids must be an integer tensor"),
    ],
)  # fmt: skip
def test_bad_concept_batches_raise_value_error(tiny, change, message):
    _, _, batch, concept_batch = tiny
    model, _ = load(tiny)
    with pytest.raises(ValueError, match=message):
        model(**batch, **{**concept_batch, **change}, return_loss=True)


def collator_extras(concept_batch):
    """What ConceptCollator adds to the concept tensors: the distinct token rows and the concept identities."""
    from modeling_concept_clip.collator import unique_rows
    from modeling_concept_clip.concepts import concept_id

    index, inverse = unique_rows(concept_batch["concept_input_ids"], concept_batch["concept_attention_mask"])
    return dict(
        concept_unique_index=index,
        concept_unique_inverse=inverse,
        concept_ids=torch.tensor([concept_id(text) for text in CONCEPTS]),
    )


def test_unique_rows_in_order_of_first_occurrence():
    from modeling_concept_clip.collator import unique_rows

    ids = torch.tensor([[1, 2, 0], [3, 4, 5], [1, 2, 0], [1, 2, 7]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1]])
    index, inverse = unique_rows(ids, mask)
    assert index.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2]
    assert torch.equal(ids[index][inverse], ids)
    empty_index, empty_inverse = unique_rows(torch.zeros(0, 3, dtype=torch.long))
    assert empty_index.shape == empty_inverse.shape == (0,)


@pytest.mark.parametrize("positives", ["owner", "shared"])
def test_collator_extras_give_the_same_losses_and_gradients(tiny, positives):
    """The collator's distinct rows and identities replace torch.unique and the token hash: same numbers."""
    _, _, batch, concept_batch = tiny
    model, _ = load(tiny, concept_config=ConceptLossConfig(xac_weight=0.5, concept_positives=positives))
    computed = model(**batch, **concept_batch, return_loss=True)
    computed_grads = torch.autograd.grad(computed.loss, list(model.parameters()))
    given = model(**batch, **concept_batch, **collator_extras(concept_batch), return_loss=True)
    given_grads = torch.autograd.grad(given.loss, list(model.parameters()))
    for name in ("loss", "caption_loss", "npc_loss", "xac_loss", "concept_embeds"):
        torch.testing.assert_close(given[name], computed[name], rtol=0, atol=1e-6)
    for a, b in zip(given_grads, computed_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_collator_hands_over_the_distinct_rows(tiny):
    from modeling_concept_clip import ConceptCollator

    model_type, folder, _, _ = tiny
    from transformers import AutoProcessor

    rows = [
        {"image": Image.new("RGB", (32, 32), "red"), "caption": c, "concepts": CONCEPTS[2 * i : 2 * i + 2]}
        for i, c in enumerate(CAPTIONS)
    ]
    batch = ConceptCollator(AutoProcessor.from_pretrained(folder), pad_to_max_length=model_type == "siglip")(rows)
    flat = [c for row in rows for c in row["concepts"]]  # "a cat" twice
    assert batch["concept_input_ids"].shape[0] == len(flat) == 7
    assert batch["concept_unique_index"].tolist() == [0, 1, 2, 3, 4, 5]
    assert batch["concept_unique_inverse"].tolist() == [0, 1, 2, 3, 4, 5, 2]


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_text_masks_built_by_the_model_equal_transformers(tiny, implementation):
    """The 4-D masks that spare transformers' mask check (a host sync) give the text tower's own embeddings."""
    _, _, batch, concept_batch = tiny
    model, plain = load(tiny, attn_implementation=implementation)
    plain.set_attn_implementation(implementation)
    with torch.no_grad():
        for ids, mask in ((batch["input_ids"], batch["attention_mask"]),
                          (concept_batch["concept_input_ids"], concept_batch["concept_attention_mask"])):  # fmt: skip
            assert not mask.all(), "the batch must have padding"
            expected = plain.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            torch.testing.assert_close(model._text_embeds(ids, mask)[1], expected, rtol=0, atol=2e-6)


def test_no_patch_tokens_without_xac(tiny, monkeypatch):
    _, _, batch, concept_batch = tiny
    model, _ = load(tiny, concept_config=ConceptLossConfig(xac_weight=0.0))
    monkeypatch.setattr(type(model), "_patch_tokens", lambda *args: pytest.fail("patch tokens computed"))
    out = model(**batch, **concept_batch, return_loss=True)
    assert out.image_token_embeds is None and out.xac_loss is None
    torch.testing.assert_close(out.loss, out.caption_loss + out.npc_loss, rtol=0, atol=0)


def saved_tensor_bytes(function, *args, **kwargs):
    """`(bytes of the tensors that autograd keeps for the backward pass while function runs, its result)`."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = function(*args, **kwargs)
    return total, result


def test_concept_gradient_checkpointing_is_exact_and_keeps_less(tiny):
    _, _, batch, concept_batch = tiny
    inputs = dict(**batch, **concept_batch, **collator_extras(concept_batch), return_loss=True)
    results = {}
    for checkpointing in (False, True):
        model, _ = load(tiny, concept_config=ConceptLossConfig(concept_gradient_checkpointing=checkpointing))
        model.train()
        saved, out = saved_tensor_bytes(model, **inputs)
        out.loss.backward()
        results[checkpointing] = saved, out.loss.detach(), [p.grad for p in model.parameters()]
    (saved_off, loss_off, grads_off), (saved_on, loss_on, grads_on) = results[False], results[True]
    torch.testing.assert_close(loss_on, loss_off, rtol=0, atol=0)
    for a, b in zip(grads_on, grads_off):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert saved_on < saved_off


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(concept_unique_inverse=None), "together"),
        (dict(concept_unique_index=torch.arange(8)), "concept_unique_index has 8 entries"),
        (dict(concept_unique_inverse=torch.zeros(3, dtype=torch.long)), "concept_unique_inverse has 3 entries"),
        (dict(concept_unique_index=torch.zeros(2, 2, dtype=torch.long)), "concept_unique_index must be a 1-D"),
        (dict(concept_unique_keys=[1, 2]), "concept_unique_keys has 2 keys"),
    ],
)
def test_bad_collator_extras_raise_value_error(tiny, change, message):
    _, _, batch, concept_batch = tiny
    model, _ = load(tiny)
    extras = {**collator_extras(concept_batch), **change}
    with pytest.raises(ValueError, match=message):
        model(**batch, **concept_batch, **extras, return_loss=True)


@pytest.mark.parametrize("model_class", [ConceptCLIPModel, ConceptSiglipModel])
def test_docstring_example_runs(model_class, tmp_path, monkeypatch):
    """Each class's example runs as written (offline, a tiny model) and its printed values are right."""
    import contextlib
    import io
    import re

    block = re.search(r"```python\n(.*?)```", model_class.__doc__, re.S).group(1)
    source, expected = [], []
    for line in block.splitlines():
        line = line.strip()
        if line.startswith((">>> ", "... ")):
            source.append(line[4:])
        elif line and not line.startswith(">>>"):
            expected.append(line)
    monkeypatch.chdir(tmp_path)
    output = io.StringIO()
    namespace = {}
    with contextlib.redirect_stdout(output):
        for statement in _statements(source):  # "single": echoes expression values, as the prompt does
            exec(compile(statement, "<example>", "single"), namespace)
    assert output.getvalue().split("\n")[:-1] == expected
    assert (tmp_path / ("c2lip-clip" if model_class is ConceptCLIPModel else "c2lip-siglip") / "config.json").exists()


def _statements(lines):
    """Group `>>>`/`...` lines into statements (a statement continues while its brackets are open)."""
    chunk, depth = [], 0
    for line in lines:
        chunk.append(line)
        depth += sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
        if depth == 0:
            yield "\n".join(chunk)
            chunk = []
