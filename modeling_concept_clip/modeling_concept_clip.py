"""`ConceptCLIPModel` and `ConceptSiglipModel`: plain CLIP/SigLIP plus C2LIP's training-only concept losses.

The classes add no parameters. `from_pretrained` loads any plain CLIP/SigLIP checkpoint, `save_pretrained` (and
`push_to_hub`) write a plain one, so a trained model costs nothing extra at inference and needs no custom code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPModel, PreTrainedModel, SiglipModel
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.models.siglip.modeling_siglip import SiglipOutput
from transformers.utils.generic import can_return_tuple

from .distributed import world_size_and_rank
from .losses import ConceptLossConfig, LossForm, c2lip_losses, concept_ids_from_tokens


@dataclass
class ConceptCLIPOutput(CLIPOutput):
    r"""
    [`CLIPOutput`] plus the C2LIP loss terms. With a process group, each loss is scaled so that its mean over
    processes (what DDP does to gradients, and `accelerator.gather(x).mean()` to logs) is the global batch's loss.

    caption_loss (`torch.Tensor`, scalar): image-caption loss of the backbone (symmetric InfoNCE).
    npc_loss (`torch.Tensor`, scalar): global image embedding vs concepts (`None` when its weight is 0).
    xac_loss (`torch.Tensor`, scalar): attention-pooled image embedding vs concepts (`None` when its weight is 0).
    concept_embeds (`torch.Tensor` of shape `(num_concepts, projection_dim)`): L2-normalised concept embeddings.
    image_token_embeds (`torch.Tensor` of shape `(batch_size, num_patches, projection_dim)`): L2-normalised patch
        tokens in the joint space.
    """

    caption_loss: torch.Tensor | None = None
    npc_loss: torch.Tensor | None = None
    xac_loss: torch.Tensor | None = None
    concept_embeds: torch.Tensor | None = None
    image_token_embeds: torch.Tensor | None = None


@dataclass
class ConceptSiglipOutput(SiglipOutput):
    r"""
    [`SiglipOutput`] plus the C2LIP loss terms (see [`ConceptCLIPOutput`]); the losses are pairwise sigmoid.
    """

    caption_loss: torch.Tensor | None = None
    npc_loss: torch.Tensor | None = None
    xac_loss: torch.Tensor | None = None
    concept_embeds: torch.Tensor | None = None
    image_token_embeds: torch.Tensor | None = None


def validate_concept_batch(
    concept_input_ids: torch.Tensor,
    concept_attention_mask: torch.Tensor | None,
    concept_image_index: torch.Tensor | None,
    concept_ids: torch.Tensor | None,
    num_images: int,
    allow_empty: bool,
) -> None:
    """Raise a `ValueError` that names the problem of a malformed concept batch (before it reaches torch)."""
    if not isinstance(concept_input_ids, torch.Tensor) or concept_input_ids.dim() != 2:
        raise ValueError("concept_input_ids must be a 2-D tensor of shape (num_concepts, sequence_length).")
    if concept_input_ids.dtype.is_floating_point or concept_input_ids.dtype == torch.bool:
        raise ValueError(f"concept_input_ids must be an integer tensor, got dtype {concept_input_ids.dtype}.")
    num_concepts, length = concept_input_ids.shape
    if num_concepts == 0 and not allow_empty:
        raise ValueError("The concept batch is empty (0 concepts); pass no concept inputs to train on captions only.")
    if length == 0 and num_concepts > 0:
        raise ValueError("concept_input_ids has sequences of length 0.")
    if concept_attention_mask is not None and concept_attention_mask.shape != concept_input_ids.shape:
        raise ValueError(
            f"concept_attention_mask has shape {tuple(concept_attention_mask.shape)}, "
            f"concept_input_ids has {tuple(concept_input_ids.shape)}."
        )
    if concept_image_index is None:
        raise ValueError("concept_image_index is required with concept_input_ids (the image of each concept).")
    for name, tensor in (("concept_image_index", concept_image_index), ("concept_ids", concept_ids)):
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1:
            raise ValueError(f"{name} must be a 1-D tensor with one entry per concept.")
        if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer (LongTensor), got dtype {tensor.dtype}.")
        if tensor.shape[0] != num_concepts:
            raise ValueError(f"{name} has {tensor.shape[0]} entries, concept_input_ids has {num_concepts} rows.")
    if num_concepts > 0:
        low, high = int(concept_image_index.min()), int(concept_image_index.max())
        if low < 0 or high >= num_images:
            raise ValueError(
                f"concept_image_index must be in [0, {num_images}) for a batch of {num_images} images, "
                f"got values in [{low}, {high}]."
            )


class ConceptModelMixin:
    """Shared C2LIP forward of the concept classes.

    Subclasses define `_patch_tokens(last_hidden_state)`: the vision tower's last hidden states `(B, T', D_vision)`
    to the patch tokens in the joint space `(B, T, D)`, computed from the same forward as the image embedding (DDP
    and FSDP want one forward per step).
    """

    _plain_model_class: type[PreTrainedModel]
    _output_class: type
    loss_form: LossForm

    def __init__(self, config, concept_config: ConceptLossConfig | None = None):
        super().__init__(config)
        # A plain attribute, not part of `config`: exported checkpoints stay plain CLIP/SigLIP.
        self.concept_config = concept_config or ConceptLossConfig()

    def to_plain(self) -> PreTrainedModel:
        """A plain `CLIPModel`/`SiglipModel` view of this model: same modules and parameters, no copy."""
        plain = self._plain_model_class.__new__(self._plain_model_class)
        plain.__dict__.update(self.__dict__)
        del plain.__dict__["concept_config"]
        return plain

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as the plain base class (`architectures: ["CLIPModel"]` or `["SiglipModel"]`, safetensors only)."""
        return self.to_plain().save_pretrained(save_directory, *args, **kwargs)

    def _image_embeds_and_tokens(self, pixel_values, interpolate_pos_encoding, **kwargs):
        """`(vision_outputs, image_embeds (B, D), image_token_embeds (B, T, D))`, joint space, not normalised.

        B may be 0 (a process whose rows were all bad, in a distributed step): the tower then runs on one padding
        image, dropped, so that this process takes part in the collectives of the others (DDP, FSDP)."""
        num_images = pixel_values.shape[0]
        if num_images == 0:
            pixel_values = pixel_values.new_ones((1, *pixel_values.shape[1:]))
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        tokens = self._patch_tokens(vision_outputs.last_hidden_state)
        return vision_outputs, vision_outputs.pooler_output[:num_images], tokens[:num_images]

    def _text_embeds(self, input_ids, attention_mask, position_ids=None, **kwargs):
        """`(text_outputs, text_embeds (N, D))`, joint space, not normalised (N may be 0, as for images)."""
        num_texts = input_ids.shape[0]
        if num_texts == 0:
            input_ids = input_ids.new_ones((1, *input_ids.shape[1:]))
            attention_mask = None if attention_mask is None else attention_mask.new_ones(input_ids.shape)
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )
        return text_outputs, text_outputs.pooler_output[:num_texts]

    def _concept_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Text embeddings `(num_concepts, dim)` of the concepts; each distinct one ("a man" of many captions) is
        encoded once. The text tower treats rows independently, so this changes nothing but the cost."""
        length = input_ids.shape[1]
        key = input_ids if attention_mask is None else torch.cat([input_ids, attention_mask.to(input_ids.dtype)], 1)
        unique, inverse = torch.unique(key, dim=0, return_inverse=True)
        if unique.shape[0] == key.shape[0]:
            return self._text_embeds(input_ids, attention_mask)[1]
        mask = None if attention_mask is None else unique[:, length:].to(attention_mask.dtype)
        return self._text_embeds(unique[:, :length], mask)[1][inverse]

    def _gathers_across_processes(self) -> bool:
        return self.concept_config.gather_across_processes and world_size_and_rank()[0] > 1

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        concept_input_ids: torch.LongTensor | None = None,
        concept_attention_mask: torch.Tensor | None = None,
        concept_image_index: torch.LongTensor | None = None,
        concept_ids: torch.LongTensor | None = None,
        **kwargs,
    ):
        r"""
        The base class's forward, plus the concept batch of C2LIP training.

        concept_input_ids (`torch.LongTensor` of shape `(num_concepts, concept_length)`, *optional*):
            Tokenised concepts (noun phrases) of all captions of the batch, concatenated.
        concept_attention_mask (`torch.Tensor` of shape `(num_concepts, concept_length)`, *optional*).
        concept_image_index (`torch.LongTensor` of shape `(num_concepts,)`, *optional*):
            Index, in this batch, of the image whose caption gave each concept.
        concept_ids (`torch.LongTensor` of shape `(num_concepts,)`, *optional*):
            Identity of each concept's normalised text (`"shared"` positives); derived from the tokens if omitted.
        return_loss (`bool`, *optional*): compute the losses.

        Without concept inputs this is exactly the base class's forward, except that in a distributed run with
        `return_loss` the caption loss spans all processes' batches. In a distributed run, every process passes
        concept inputs (possibly with zero rows), or none does.
        """
        gathers = self._gathers_across_processes()
        if concept_input_ids is None and not (return_loss and gathers):
            if concept_image_index is not None or concept_ids is not None:
                raise ValueError("concept_image_index/concept_ids were given without concept_input_ids.")
            return super().forward(
                input_ids=input_ids,
                pixel_values=pixel_values,
                attention_mask=attention_mask,
                position_ids=position_ids,
                return_loss=return_loss,
                interpolate_pos_encoding=interpolate_pos_encoding,
                **kwargs,
            )
        if pixel_values is None or input_ids is None:
            raise ValueError("C2LIP training needs both pixel_values and input_ids (the captions).")
        if concept_input_ids is not None:
            validate_concept_batch(
                concept_input_ids,
                concept_attention_mask,
                concept_image_index,
                concept_ids,
                num_images=pixel_values.shape[0],
                allow_empty=gathers,
            )

        vision_outputs, image_embeds, image_tokens = self._image_embeds_and_tokens(
            pixel_values, interpolate_pos_encoding, **kwargs
        )
        text_outputs, text_embeds = self._text_embeds(input_ids, attention_mask, position_ids, **kwargs)
        image_embeds = F.normalize(image_embeds, dim=-1)
        text_embeds = F.normalize(text_embeds, dim=-1)
        image_tokens = F.normalize(image_tokens, dim=-1)

        logit_scale = self.logit_scale.exp()
        logit_bias = getattr(self, "logit_bias", None)
        # The base classes' logits (same operation order).
        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * logit_scale
        if logit_bias is not None:
            logits_per_text = logits_per_text + logit_bias

        concept_embeds = None
        if concept_input_ids is not None:
            if concept_input_ids.shape[0] > 0:
                concept_embeds = F.normalize(self._concept_embeds(concept_input_ids, concept_attention_mask), dim=-1)
            else:  # no concepts here; stays attached to the graph so this process joins the backward gathers
                concept_embeds = text_embeds[:0]
            if concept_ids is None and self.concept_config.concept_positives == "shared":
                concept_ids = concept_ids_from_tokens(concept_input_ids, concept_attention_mask)

        losses = None
        if return_loss:
            losses = c2lip_losses(
                image_embeds=image_embeds,
                text_embeds=text_embeds,
                logit_scale=logit_scale,
                logit_bias=logit_bias,
                loss_form=self.loss_form,
                concept_embeds=concept_embeds,
                image_tokens=image_tokens,
                concept_image_index=concept_image_index,
                concept_ids=concept_ids,
                config=self.concept_config,
            )
            # Shares sum to the global loss; DDP averages gradients, so scale by the number of processes.
            scale = world_size_and_rank()[0] if gathers else 1
            losses = {name: None if value is None else value * scale for name, value in vars(losses).items()}

        return self._output_class(
            loss=losses["loss"] if losses else None,
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            caption_loss=losses["caption_loss"] if losses else None,
            npc_loss=losses["npc_loss"] if losses else None,
            xac_loss=losses["xac_loss"] if losses else None,
            concept_embeds=concept_embeds,
            image_token_embeds=image_tokens,
        )


class ConceptCLIPModel(ConceptModelMixin, CLIPModel):
    """`CLIPModel` with C2LIP's concept losses (softmax form, see `modeling_concept_clip.losses`).

    Patch tokens in the joint space: `visual_projection(post_layernorm(last_hidden_state[:, 1:]))`, i.e. each patch
    goes through the same layer norm and projection as the CLS token that gives the image embedding.

    Example:

    ```python
    >>> from modeling_concept_clip import ConceptCLIPModel, ConceptLossConfig
    >>> model = ConceptCLIPModel.from_pretrained("openai/clip-vit-base-patch32", dtype="float32",
    ...                                          concept_config=ConceptLossConfig(concept_positives="shared"))
    >>> outputs = model(**batch, return_loss=True)  # batch from `ConceptCollator`
    >>> outputs.loss.backward()
    >>> model.save_pretrained("out")  # a plain CLIPModel checkpoint
    ```
    """

    _plain_model_class = CLIPModel
    _output_class = ConceptCLIPOutput
    loss_form: LossForm = "softmax"

    def _patch_tokens(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        # last_hidden_state: (B, 1 + T, D_vision) before the final layer norm; position 0 is the CLS token.
        return self.visual_projection(self.vision_model.post_layernorm(last_hidden_state[:, 1:]))


class ConceptSiglipModel(ConceptModelMixin, SiglipModel):
    """`SiglipModel` with C2LIP's concept losses (pairwise sigmoid with the model's logit scale and bias).

    SigLIP has no CLS token and no projection: its image embedding is the attention-pooling head's output. Patch
    tokens enter the joint space as in the authors' release, through the head as if its attention were one-hot on
    that token (value and output projections, then `h + mlp(layernorm(h))`). This is computed by calling the head
    itself on each token as a sequence of length one, where the softmax over a single key is exactly one-hot, so
    the head's own forward runs (FSDP and DeepSpeed ZeRO-3 gather its sharded weights as usual).
    """

    _plain_model_class = SiglipModel
    _output_class = ConceptSiglipOutput
    loss_form: LossForm = "sigmoid"

    def _patch_tokens(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        # last_hidden_state: (B, T, D), after the final layer norm (SigLIP normalises every token).
        head = getattr(self.vision_model, "head", None)
        if head is None:
            raise ValueError("C2LIP on SigLIP needs the attention-pooling head (vision_config.vision_use_head=True).")
        batch_size, num_tokens, dim = last_hidden_state.shape
        return head(last_hidden_state.reshape(batch_size * num_tokens, 1, dim)).view(batch_size, num_tokens, -1)
