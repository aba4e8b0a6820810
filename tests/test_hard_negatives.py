"""Hard negatives (NegCLIP's baseline): the swap rule on real spaCy concepts, the collator and its counts, and the
caption loss with negatives against a naive per-row loop, forward and gradients."""

import doctest

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from modeling_concept_clip import (
    ConceptCLIPModel,
    ConceptCollator,
    ConceptExtractor,
    ConceptExtractorConfig,
    ConceptLossConfig,
    ConceptSiglipModel,
    c2lip_losses,
)
from modeling_concept_clip.concepts import negatives
from modeling_concept_clip.concepts.negatives import swap_negative
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor
from modeling_concept_clip.training.data import lockstep

from .c2lip_reference import naive_c2lip_loss

# caption -> (its concepts as spaCy gives them, its negative under seed 0, under seed 1); None: nothing to swap.
CAPTIONS = {
    "a red couch next to a blue lamp": (
        ["a red couch", "a blue lamp"],
        "a blue couch next to a red lamp",
        "a blue couch next to a red lamp",
    ),
    # Three attributes each: the seed picks the aligned pair (here colour, then pattern).
    "a big green dotted diamond and a small orange hollow circle are visible on a gray background": (
        ["a big green dotted diamond", "a small orange hollow circle"],  # "background" is not a concept
        "a big orange dotted diamond and a small green hollow circle are visible on a gray background",
        "a big green hollow diamond and a small orange dotted circle are visible on a gray background",
    ),
    # Equal attributes are not swapped: only the sizes differ.
    "there is a small red stripy heart and there is a big red stripy heart on a black background": (
        ["a small red stripy heart", "a big red stripy heart"],
        "there is a big red stripy heart and there is a small red stripy heart on a black background",
        "there is a big red stripy heart and there is a small red stripy heart on a black background",
    ),
    # The article follows its new word (seed 0); a phrase without attributes ("the park") takes no part.
    "An old wooden bench beside a tall green tree in the park.": (
        ["An old wooden bench", "a tall green tree", "the park"],
        "A tall wooden bench beside an old green tree in the park.",
        "An old green bench beside a tall wooden tree in the park.",
    ),
    # Two attributes and one: aligned from the head noun ("white" with "red"); "and" is no attribute.
    "a black and white dog with a red collar": (
        ["a black and white dog", "a red collar"],
        "a black and red dog with a white collar",
        "a black and red dog with a white collar",
    ),
    # Nothing to swap: one phrase with attributes; numbers are counts, not attributes; one phrase.
    "a dog on a red couch": (["a dog", "a red couch"], None, None),
    "two dogs and three cats": (["two dogs", "three cats"], None, None),
    "a dog": (["a dog"], None, None),
}


@pytest.fixture(scope="module")
def extracted():
    with ConceptExtractor(ConceptExtractorConfig(n_process=1)) as extractor:
        return dict(zip(CAPTIONS, extractor.extract(list(CAPTIONS))))


def test_negatives_of_captions_written_out(extracted):
    for caption, (concepts, seed0, seed1) in CAPTIONS.items():
        assert extracted[caption] == concepts, caption
        assert swap_negative(caption, concepts, seed=0) == seed0, caption
        assert swap_negative(caption, concepts, seed=1) == seed1, caption
    # Concepts that are not in the caption (e.g. the whole-caption fallback's rewording) are not phrases.
    assert swap_negative("a red car and a blue bus", ["a red truck", "a blue bus"]) is None
    assert doctest.testmod(negatives).failed == 0


def test_collator_makes_one_negative_per_caption_and_the_loop_counts_the_rest(extracted):
    _, processor = build_tiny_model_and_processor("clip")
    rows = [{"image": Image.new("RGB", (32, 32)), "caption": c, "concepts": k} for c, k in extracted.items()]
    rows.append({"image": Image.new("RGB", (32, 32)), "caption": "a red cat and a blue dog", "concepts": []})
    expected = [n for _, n, _ in CAPTIONS.values() if n is not None]  # in row order
    collator = ConceptCollator(processor, hard_negatives="swap", concept_inputs=False)
    batch = collator(rows)
    tokens = processor.tokenizer(expected, padding=True, truncation=True, return_tensors="pt")
    assert torch.equal(batch["negative_input_ids"], tokens.input_ids)
    assert torch.equal(batch["negative_attention_mask"], tokens.attention_mask)
    # Without the concept losses a row without concepts is kept (without a negative), and no concept is passed on.
    assert batch["skipped"] == [] and batch["pixel_values"].shape[0] == len(rows)
    assert not any(key.startswith("concept_") for key in batch)
    step = next(lockstep([batch], sums=lambda values: list(values)))
    assert step.hard_negatives == {"made": len(expected), "none": len(rows) - len(expected)}
    # With the concept losses, the row without concepts is a counted skip, as before.
    with_concepts = ConceptCollator(processor, hard_negatives="swap", hard_negative_seed=1)(rows)
    assert [row.reason for row in with_concepts["skipped"]] == ["concepts"]
    assert "concept_input_ids" in with_concepts
    assert with_concepts["negative_input_ids"].shape[0] == len(expected)
    # A batch where no caption has a negative still passes the key (zero rows): every process calls the text tower.
    none = collator([rows[-2]])
    assert none["negative_input_ids"].shape == (0, none["input_ids"].shape[1])
    assert "negative_input_ids" not in ConceptCollator(processor)(rows[:1])  # off by default
    with pytest.raises(ValueError, match="concepts_column"):
        ConceptCollator(processor, concepts_column=None, hard_negatives="swap")


# --- the loss -----------------------------------------------------------------------------------------------------


def naive_caption_loss(image, text, negative, scale, bias, form):
    """The caption loss with hard negatives, one image (and one caption) at a time."""
    num_images = image.shape[0]
    texts = list(text) + list(negative)
    if form == "sigmoid":
        total = 0.0
        for r, t in enumerate(texts):
            for i, x in enumerate(image):
                sign = 1.0 if r == i else -1.0
                total = total - F.logsigmoid(sign * (scale * (t @ x) + bias))
        return total / num_images
    image_to_text = [
        -torch.log_softmax(torch.stack([scale * (x @ t) for t in texts]), 0)[i] for i, x in enumerate(image)
    ]
    text_to_image = [
        -torch.log_softmax(torch.stack([scale * (t @ x) for x in image]), 0)[j] for j, t in enumerate(text)
    ]
    return (sum(image_to_text) / num_images + sum(text_to_image) / num_images) / 2


def unit(generator, *shape):
    return F.normalize(torch.randn(*shape, generator=generator), dim=-1).requires_grad_()


@pytest.mark.parametrize("form", ["sigmoid", "softmax"])
def test_caption_loss_with_negatives_matches_naive_loop(form):
    generator = torch.Generator().manual_seed(0)
    image, text, negative = unit(generator, 5, 16), unit(generator, 5, 16), unit(generator, 3, 16)
    concepts, tokens = unit(generator, 4, 16), unit(generator, 5, 7, 16)
    index, ids = torch.tensor([0, 0, 2, 4]), torch.tensor([1, 2, 3, 4])
    scale, bias = torch.tensor(7.0), torch.tensor(-2.0) if form == "sigmoid" else None
    config = ConceptLossConfig(xac_weight=0.5, concept_positives="owner")
    ours = c2lip_losses(
        image, text, scale, bias, form, concepts, tokens, index, ids, config, negative_embeds=negative
    )  # fmt: skip
    naive = naive_caption_loss(image, text, negative, scale, 0.0 if bias is None else bias, form)
    torch.testing.assert_close(ours.caption_loss, naive, atol=1e-5, rtol=0)
    inputs = [image, text, negative]
    for mine, theirs in zip(
        torch.autograd.grad(ours.caption_loss, inputs, retain_graph=True), torch.autograd.grad(naive, inputs)
    ):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    # The concept terms do not see the negatives; the total is the sum of the terms.
    _, _, npc, xac = naive_c2lip_loss(
        image, text, concepts, tokens, index, ids, scale, 0.0 if bias is None else bias, form, "owner", 1.0, 1.0, 0.5
    )
    torch.testing.assert_close(ours.npc_loss, npc, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, naive + npc + 0.5 * xac, atol=1e-5, rtol=0)
    # Zero negatives are no negatives; negatives make the caption loss larger (more competitors / negative pairs).
    without = c2lip_losses(image, text, scale, bias, form)
    torch.testing.assert_close(
        c2lip_losses(image, text, scale, bias, form, negative_embeds=text[:0]).loss, without.loss
    )
    assert ours.caption_loss > without.caption_loss
    with pytest.raises(ValueError, match="negative_embeds must have shape"):
        c2lip_losses(image, text, scale, bias, form, negative_embeds=negative[:, :8])


@pytest.mark.parametrize("model_type", ["clip", "siglip"])
def test_model_encodes_negatives_with_its_text_tower(model_type):
    plain, processor = build_tiny_model_and_processor(model_type, seed=0)
    model_class = ConceptCLIPModel if model_type == "clip" else ConceptSiglipModel
    model = model_class(plain.config, ConceptLossConfig())
    model.load_state_dict(plain.state_dict())
    rows = [
        {"image": Image.new("RGB", (32, 32), "red"), "caption": "a red circle and a blue square",
         "concepts": ["a red circle", "a blue square"]},
        {"image": Image.new("RGB", (32, 32), "blue"), "caption": "a big red car next to a small blue dog",
         "concepts": ["a big red car", "a small blue dog"]},
        {"image": Image.new("RGB", (32, 32), "green"), "caption": "a cat", "concepts": ["a cat"]},
    ]  # fmt: skip
    collator = ConceptCollator(
        processor, concept_inputs=False, hard_negatives="swap", pad_to_max_length=model_type == "siglip"
    )
    batch = collator(rows)
    del batch["skipped"], batch["num_rows"]
    out = model(**batch, return_loss=True)
    negative_mask = batch.get("negative_attention_mask")
    with torch.no_grad():
        reference = plain.get_text_features(input_ids=batch["negative_input_ids"], attention_mask=negative_mask)
    torch.testing.assert_close(out.negative_embeds, F.normalize(reference.pooler_output, dim=-1), atol=1e-5, rtol=0)
    bias = plain.logit_bias.squeeze() if model_type == "siglip" else 0.0
    naive = naive_caption_loss(
        out.image_embeds, out.text_embeds, out.negative_embeds, plain.logit_scale.exp(), bias, model.loss_form
    )
    torch.testing.assert_close(out.loss, naive.squeeze(), atol=1e-5, rtol=0)
    assert out.npc_loss is None
    assert batch["negative_input_ids"].shape[0] == 2 and out.negative_embeds.shape[0] == 2
    # Without return_loss the negatives are not encoded: the base class's forward.
    assert getattr(model(**batch), "negative_embeds", None) is None
