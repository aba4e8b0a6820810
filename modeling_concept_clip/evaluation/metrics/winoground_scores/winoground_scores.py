"""Winoground text, image and group scores from the four image-caption scores of each example."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Winoground (Thrush et al., CVPR 2022) pairs two images with two captions that use the same words in a different
order. With s(c, i) the score of caption c and image i, an example is correct for
- the text score when s(c0, i0) > s(c1, i0) and s(c1, i1) > s(c0, i1) (each image picks its caption);
- the image score when s(c0, i0) > s(c0, i1) and s(c1, i1) > s(c1, i0) (each caption picks its image);
- the group score when both hold. Comparisons are strict: a tie is wrong.
"""

_KWARGS_DESCRIPTION = """
Args:
    c0_i0, c0_i1, c1_i0, c1_i1 (`list[float]`): per example, the score of caption_0/caption_1 with
        image_0/image_1.
Returns:
    `{"text_score": float, "image_score": float, "group_score": float}`, each in [0, 1].
Examples:
    >>> metric = evaluate.load("modeling_concept_clip/evaluation/metrics/winoground_scores")
    >>> metric.compute(c0_i0=[0.9], c0_i1=[0.1], c1_i0=[0.2], c1_i1=[0.8])
    {'text_score': 1.0, 'image_score': 1.0, 'group_score': 1.0}
"""

_CITATION = """
@inproceedings{thrush2022winoground,
  title={Winoground: Probing Vision and Language Models for Visio-Linguistic Compositionality},
  author={Thrush, Tristan and Jiang, Ryan and Bartolo, Max and Singh, Amanpreet and Williams, Adina and
          Kiela, Douwe and Ross, Candace},
  booktitle={CVPR},
  year={2022}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WinogroundScores(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {name: datasets.Value("float64") for name in ("c0_i0", "c0_i1", "c1_i0", "c1_i1")}
            ),
        )

    def _compute(self, c0_i0, c0_i1, c1_i0, c1_i1):
        c0_i0, c0_i1, c1_i0, c1_i1 = (np.asarray(v, dtype=np.float64) for v in (c0_i0, c0_i1, c1_i0, c1_i1))
        if c0_i0.size == 0:
            raise ValueError("winoground_scores needs at least one example.")
        text = (c0_i0 > c1_i0) & (c1_i1 > c0_i1)
        image = (c0_i0 > c0_i1) & (c1_i1 > c1_i0)
        return {
            "text_score": float(text.mean()),
            "image_score": float(image.mean()),
            "group_score": float((text & image).mean()),
        }
