"""C2LIP: concept-centric training of CLIP and SigLIP models for Hugging Face Transformers.

Public names load on first use, so that command-line tools that need only part of the library (concept
extraction, say) start without importing torch and the model code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_attributes

__version__ = "0.1.0.dev0"

_EXPORTS = {
    "losses": ["C2LIPLosses", "ConceptLossConfig", "c2lip_losses", "concept_ids_from_tokens", "concept_positive_mask"],
    "modeling_concept_clip": ["ConceptCLIPModel", "ConceptCLIPOutput", "ConceptSiglipModel", "ConceptSiglipOutput"],
    "pooling": ["concept_attention_scores", "concept_attention_weights"],
    "collator": ["ConceptCollator"],
    "concepts": ["ConceptExtractor", "ConceptExtractorConfig", "add_concepts_column", "concept_id"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = [
    "C2LIPLosses",
    "ConceptCLIPModel",
    "ConceptCLIPOutput",
    "ConceptCollator",
    "ConceptExtractor",
    "ConceptExtractorConfig",
    "ConceptLossConfig",
    "ConceptSiglipModel",
    "ConceptSiglipOutput",
    "add_concepts_column",
    "c2lip_losses",
    "concept_attention_scores",
    "concept_attention_weights",
    "concept_id",
    "concept_ids_from_tokens",
    "concept_positive_mask",
]

if TYPE_CHECKING:
    from .collator import ConceptCollator
    from .concepts import ConceptExtractor, ConceptExtractorConfig, add_concepts_column, concept_id
    from .losses import C2LIPLosses, ConceptLossConfig, c2lip_losses, concept_ids_from_tokens, concept_positive_mask
    from .modeling_concept_clip import ConceptCLIPModel, ConceptCLIPOutput, ConceptSiglipModel, ConceptSiglipOutput
    from .pooling import concept_attention_scores, concept_attention_weights


__getattr__, __dir__ = lazy_attributes(__name__, _MODULE_OF, globals())
