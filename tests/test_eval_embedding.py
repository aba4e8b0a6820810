"""`ModelEmbedder` on the tiny CLIP and SigLIP models: batching, caching, padding rules and image errors."""

import pytest
import torch
import torch.nn.functional as F

from modeling_concept_clip.evaluation import EmbeddingConfig, EvaluationDataError, ImageRef, ModelEmbedder
from modeling_concept_clip.testing_utils import build_tiny_model_and_processor

from .eval_fixtures import write_image

TEXTS = ["a red circle", "a photo of a big blue star next to a small cat", "a red circle", "the dog"]


@pytest.fixture(scope="module", params=["clip", "siglip"])
def tiny(request):
    model, processor = build_tiny_model_and_processor(request.param)
    return request.param, model, processor


def reference_text_embeddings(model_type, model, processor, texts):
    """One text at a time, tokenised as each family expects (the rule the embedder must follow)."""
    rows = []
    for text in texts:
        if model_type == "siglip":  # SigLIP pools the last position: padded to the full length
            inputs = processor.tokenizer([text], padding="max_length", max_length=64, return_tensors="pt")
        else:
            inputs = processor.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            rows.append(model.get_text_features(**inputs).pooler_output[0])
    return F.normalize(torch.stack(rows), dim=-1)


def test_text_embeddings_equal_those_of_training(tiny):
    """Evaluation and training (`ConceptCollator`) tokenise alike (SigLIP: full length, mask included)."""
    from modeling_concept_clip.collator import ConceptCollator

    model_type, model, processor = tiny
    embedder = ModelEmbedder(model, processor, EmbeddingConfig(progress=False))
    collator = ConceptCollator(processor, pad_to_max_length=model_type == "siglip")
    with torch.no_grad():
        training = F.normalize(model.get_text_features(**collator._tokenize(TEXTS)).pooler_output, dim=-1)
    torch.testing.assert_close(embedder.embed_texts(TEXTS), training, atol=1e-5, rtol=1e-4)


def test_text_embeddings_match_one_by_one_and_deduplicate(tiny):
    model_type, model, processor = tiny
    embedder = ModelEmbedder(model, processor, EmbeddingConfig(text_batch_size=2, progress=False))
    embeddings = embedder.embed_texts(TEXTS)
    assert embeddings.shape == (4, model.config.projection_dim if model_type == "clip" else 32)
    assert embedder.num_texts_encoded == 3  # "a red circle" twice
    torch.testing.assert_close(
        embeddings, reference_text_embeddings(model_type, model, processor, TEXTS), atol=1e-5, rtol=1e-4
    )
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(4))
    embedder.embed_texts(["the dog"])
    assert embedder.num_texts_encoded == 3  # cached


def test_image_embeddings_are_batch_and_thread_invariant(tiny, tmp_path):
    _, model, processor = tiny
    refs = [ImageRef.from_file(write_image(tmp_path / f"{i}.png", (40 * i, 255 - 30 * i, 90)), f"record {i}")
            for i in range(5)]  # fmt: skip
    refs.append(refs[0])  # the same file again: embedded once
    one = ModelEmbedder(model, processor, EmbeddingConfig(image_batch_size=1, num_workers=0, progress=False))
    four = ModelEmbedder(model, processor, EmbeddingConfig(image_batch_size=4, num_workers=2, progress=False))
    a, b = one.embed_images(refs), four.embed_images(refs)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert four.num_images_encoded == 5
    torch.testing.assert_close(a[0], a[5])


def test_crop_box_embeds_the_cropped_region(tiny, tmp_path):
    _, model, processor = tiny
    from PIL import Image

    image = Image.new("RGB", (40, 20), (255, 0, 0))
    image.paste((0, 0, 255), (20, 0, 40, 20))
    image.save(tmp_path / "two.png")
    write_image(tmp_path / "blue.png", (0, 0, 255), size=(20, 20))
    embedder = ModelEmbedder(model, processor, EmbeddingConfig(progress=False))
    cropped = ImageRef.from_file(tmp_path / "two.png", "crop", box=(20, 0, 40, 20))
    plain = ImageRef.from_file(tmp_path / "blue.png", "plain")
    embeddings = embedder.embed_images([cropped, plain])
    torch.testing.assert_close(embeddings[0], embeddings[1], atol=1e-5, rtol=1e-4)


def test_unreadable_image_names_file_and_record(tiny, tmp_path):
    _, model, processor = tiny
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    ref = ImageRef.from_file(broken, "swap_att.json, record '12'")
    embedder = ModelEmbedder(model, processor, EmbeddingConfig(num_workers=2, progress=False))
    with pytest.raises(EvaluationDataError, match=r"swap_att\.json, record '12': cannot read image .*broken\.jpg"):
        embedder.embed_images([ref])
    gone = ImageRef.from_file(tmp_path / "gone.png", "record 3")
    with pytest.raises(EvaluationDataError, match=r"record 3: image file not found: .*gone\.png"):
        embedder.embed_images([gone])


def test_model_mode_and_device_are_left_alone(tiny):
    _, model, processor = tiny
    from modeling_concept_clip.evaluation import evaluate_model

    model.train()
    run = evaluate_model(model, processor, [])
    assert model.training  # restored
    assert run.settings["dtype"] == "float32" and run.settings["device"] == "cpu"
    model.eval()
