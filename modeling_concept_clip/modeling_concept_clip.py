"""`ConceptCLIPModel` and `ConceptSiglipModel`: plain CLIP/SigLIP plus C2LIP's training-only concept losses.

The classes add no parameters. `from_pretrained` loads any plain CLIP/SigLIP checkpoint, `save_pretrained` (and
`push_to_hub`) write a plain one, so a trained model costs nothing extra at inference and needs no custom code.

With the extras of [`ConceptCollator`] (`concept_unique_index`, `concept_unique_inverse`, `concept_ids`), a C2LIP
step makes no host sync: every shape is known on the host, and nothing the model computes is read back by it.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers import CLIPModel, PreTrainedModel, SiglipModel
from transformers.models.clip.modeling_clip import CLIPOutput
from transformers.models.siglip.modeling_siglip import SiglipOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple

from .distributed import (
    all_gather_host_lists,
    all_gather_rows,
    plan_distinct_encoding,
    to_device_async,
    world_size_and_rank,
)
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
        tokens in the joint space (`None` when `xac_weight` is 0: they are not computed).
    negative_embeds (`torch.Tensor` of shape `(num_negatives, projection_dim)`): L2-normalised hard-negative
        captions (`None` without `negative_input_ids`).
    """

    caption_loss: torch.Tensor | None = None
    npc_loss: torch.Tensor | None = None
    xac_loss: torch.Tensor | None = None
    concept_embeds: torch.Tensor | None = None
    image_token_embeds: torch.Tensor | None = None
    negative_embeds: torch.Tensor | None = None


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
    negative_embeds: torch.Tensor | None = None


def _check_index_tensor(name: str, tensor: torch.Tensor | None, length: int | None) -> None:
    if tensor is None:
        return
    if not isinstance(tensor, torch.Tensor) or tensor.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor" + (" with one entry per concept." if length else "."))
    if tensor.dtype.is_floating_point or tensor.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer (LongTensor), got dtype {tensor.dtype}.")
    if length is not None and tensor.shape[0] != length:
        raise ValueError(f"{name} has {tensor.shape[0]} entries, concept_input_ids has {length} rows.")


def _check_text_batch(name: str, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
    """A tokenised batch of texts (`{name}_input_ids`, `{name}_attention_mask`): 2-D integers, masks of its shape."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"{name}_input_ids must be a 2-D tensor of shape (num_{name}s, sequence_length).")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"{name}_input_ids must be an integer tensor, got dtype {input_ids.dtype}.")
    if input_ids.shape[1] == 0:
        raise ValueError(f"{name}_input_ids has sequences of length 0.")
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"{name}_attention_mask has shape {tuple(attention_mask.shape)}, "
            f"{name}_input_ids has {tuple(input_ids.shape)}."
        )


def validate_concept_batch(
    concept_input_ids: torch.Tensor,
    concept_attention_mask: torch.Tensor | None,
    concept_image_index: torch.Tensor | None,
    concept_ids: torch.Tensor | None,
    num_images: int,
    allow_empty: bool,
    concept_unique_index: torch.Tensor | None = None,
    concept_unique_inverse: torch.Tensor | None = None,
    concept_unique_keys: list[int] | None = None,
) -> None:
    """Raise a `ValueError` that names the problem of a malformed concept batch (before it reaches torch).

    Shapes and dtypes are always checked. The values of `concept_image_index` are checked only without the
    collator's extras (`concept_unique_index`/`concept_unique_inverse`): reading them is a host sync, and the
    collator builds them in range.
    """
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
    _check_index_tensor("concept_image_index", concept_image_index, num_concepts)
    _check_index_tensor("concept_ids", concept_ids, num_concepts)
    if (concept_unique_index is None) != (concept_unique_inverse is None):
        raise ValueError("Pass concept_unique_index and concept_unique_inverse together (ConceptCollator does).")
    if concept_unique_index is not None:
        _check_index_tensor("concept_unique_inverse", concept_unique_inverse, num_concepts)
        _check_index_tensor("concept_unique_index", concept_unique_index, None)
        num_unique = concept_unique_index.shape[0]
        if num_unique > num_concepts or (num_unique == 0) != (num_concepts == 0):
            raise ValueError(f"concept_unique_index has {num_unique} entries for {num_concepts} concepts.")
        if concept_unique_keys is not None and len(concept_unique_keys) != num_unique:
            raise ValueError(
                f"concept_unique_keys has {len(concept_unique_keys)} keys, concept_unique_index {num_unique} rows."
            )
    elif num_concepts > 0:  # a host sync; the collator's batches skip it
        low, high = int(concept_image_index.min()), int(concept_image_index.max())
        if low < 0 or high >= num_images:
            raise ValueError(
                f"concept_image_index must be in [0, {num_images}) for a batch of {num_images} images, "
                f"got values in [{low}, {high}]."
            )


@dataclass
class _ConceptInputs:
    """The concept arguments of `forward` (see there), together."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    image_index: torch.Tensor | None
    ids: torch.Tensor | None
    unique_index: torch.Tensor | None
    unique_inverse: torch.Tensor | None
    unique_keys: list[int] | None

    def validate(self, num_images: int, allow_empty: bool) -> None:
        validate_concept_batch(
            self.input_ids,
            self.attention_mask,
            self.image_index,
            self.ids,
            num_images,
            allow_empty,
            self.unique_index,
            self.unique_inverse,
            self.unique_keys,
        )


def _take_rows(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, rows: torch.Tensor):
    return input_ids[rows], None if attention_mask is None else attention_mask[rows]


class ConceptModelMixin:
    """Shared C2LIP forward of the concept classes.

    Subclasses define `_patch_tokens(last_hidden_state)`: the vision tower's last hidden states `(B, T', D_vision)`
    to the patch tokens in the joint space `(B, T, D)`, computed from the same forward as the image embedding (DDP
    and FSDP want one forward per step); and `_causal_text`: whether the text tower attends causally.
    """

    _plain_model_class: type[PreTrainedModel]
    _output_class: type
    _causal_text: bool
    loss_form: LossForm

    def __init__(self, config, concept_config: ConceptLossConfig | None = None):
        super().__init__(config)
        # A plain attribute, not part of `config`: exported checkpoints stay plain CLIP/SigLIP.
        self.concept_config = concept_config or ConceptLossConfig()

    @classmethod
    def is_custom_code(cls) -> bool:
        """False, as for the base class: the modules and `_init_weights` are transformers' own.

        transformers counts every class defined outside its package as custom code, and then skips the
        initialisation of modules without parameters of their own (attention, MLP): the weights that a checkpoint
        lacks would be initialised otherwise than by `CLIPModel`/`SiglipModel`.
        """
        return cls.is_remote_code()

    def to_plain(self) -> PreTrainedModel:
        """A plain `CLIPModel`/`SiglipModel` view of this model: same modules and parameters, no copy."""
        plain = self._plain_model_class.__new__(self._plain_model_class)
        plain.__dict__.update(self.__dict__)
        del plain.__dict__["concept_config"]
        return plain

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save as the plain base class (`architectures: ["CLIPModel"]` or `["SiglipModel"]`, safetensors only)."""
        return self.to_plain().save_pretrained(save_directory, *args, **kwargs)

    def _loss_world(self) -> tuple[int, int]:
        """`(world_size, rank)` over which the losses gather: the default process group's, or `(1, 0)`."""
        return world_size_and_rank() if self.concept_config.gather_across_processes else (1, 0)

    def _text_attention_mask(self, attention_mask: torch.Tensor | None, dtype: torch.dtype):
        """The 4-D attention mask that the text tower would build from a 2-D padding mask.

        Built here because transformers reads a 2-D mask's values to decide whether it may skip it (a host sync per
        text forward); a 4-D mask is used as given. Attention kernels other than SDPA and eager get the 2-D mask.
        """
        implementation = self.config.text_config._attn_implementation
        if attention_mask is None or attention_mask.dim() != 2 or implementation not in ("sdpa", "eager"):
            return attention_mask
        length = attention_mask.shape[1]
        keep = attention_mask.bool()[:, None, None, :].expand(-1, 1, length, length)
        if self._causal_text:
            keep = keep & torch.ones(length, length, dtype=torch.bool, device=keep.device).tril()
        if implementation == "sdpa":
            return keep
        return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)

    def _text_embeds(self, input_ids, attention_mask, position_ids=None, **kwargs):
        """`(text_outputs, text_embeds (N, D))`, joint space, not normalised.

        N may be 0 (a process whose rows were all bad, in a distributed step): the tower then runs on one padding
        row, dropped, so that this process takes part in the collectives of the others (DDP, FSDP)."""
        num_texts = input_ids.shape[0]
        if num_texts == 0:
            input_ids = input_ids.new_ones((1, *input_ids.shape[1:]))
            attention_mask = None if attention_mask is None else attention_mask.new_ones(input_ids.shape)
        mask = self._text_attention_mask(attention_mask, self.dtype)
        text_outputs = self.get_text_features(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs
        )
        return text_outputs, text_outputs.pooler_output[:num_texts]

    def _image_embeds_and_tokens(self, pixel_values, interpolate_pos_encoding, with_tokens: bool, **kwargs):
        """`(vision_outputs, image_embeds (B, D), image_token_embeds (B, T, D) or None)`, joint space, not
        normalised; the patch tokens come from the same vision forward (DDP and FSDP want one forward per step).

        B may be 0, as N in `_text_embeds`: the tower (and the patch-token path) then runs on one padding image."""
        num_images = pixel_values.shape[0]
        if num_images == 0:
            pixel_values = pixel_values.new_ones((1, *pixel_values.shape[1:]))
        vision_outputs = self.get_image_features(
            pixel_values=pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs
        )
        tokens = self._patch_tokens(vision_outputs.last_hidden_state)[:num_images] if with_tokens else None
        return vision_outputs, vision_outputs.pooler_output[:num_images], tokens

    def _concept_text_embeds(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Pooled text embeddings of the concept texts; recomputed in the backward pass with
        `concept_gradient_checkpointing` (only the inputs and the pooled outputs stay in memory)."""

        def embed(input_ids, attention_mask):
            return self._text_embeds(input_ids, attention_mask)[1]

        if self.concept_config.concept_gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(embed, input_ids, attention_mask, use_reentrant=False)
        return embed(input_ids, attention_mask)

    def _concept_embeds(
        self,
        concepts: _ConceptInputs,
        world_size: int,
        rank: int,
        filler: tuple[torch.Tensor, torch.Tensor | None],
    ) -> torch.Tensor:
        """Text embeddings `(num_concepts, dim)` of the concepts, each distinct row ("a man" of many captions)
        encoded once: per process, or with `global_concept_dedup` once in the global batch. The text tower treats
        rows independently, so this changes nothing but the cost.

        `concepts.unique_index` (rows to encode), `.unique_inverse` (the encoded row of each concept) and
        `.unique_keys` (their identities across processes) come from the collator; without them `torch.unique` finds the distinct rows, a
        host sync (its output size depends on the data).

        A process with nothing to encode (no concepts in its batch, or all of them encoded elsewhere) still runs
        the text tower, on `filler` (one caption row), and returns a `(0, dim)` slice of it: every process then runs
        the same modules the same number of times (FSDP gathers each sharded module's weights at every call), and
        its empty rows stay attached to the graph, so that it joins the backward pass's collectives.
        """
        input_ids, attention_mask, unique_index = concepts.input_ids, concepts.attention_mask, concepts.unique_index
        if self.concept_config.global_concept_dedup and world_size > 1:
            unique_keys = [] if concepts.unique_keys is None and input_ids.shape[0] == 0 else concepts.unique_keys
            if unique_keys is None or unique_index is None:
                raise ValueError("global_concept_dedup needs the collator's concept_unique_index/_inverse/_keys.")
            plan = plan_distinct_encoding(all_gather_host_lists(unique_keys, world_size), rank)
            if plan.encode:
                rows = unique_index[to_device_async(plan.encode, input_ids.device)]
                own = self._concept_text_embeds(*_take_rows(input_ids, attention_mask, rows))
            else:
                own = self._concept_text_embeds(*filler)[:0]
            table = all_gather_rows(own, plan.counts, with_grad=True)  # every distinct concept of all processes
            return table[to_device_async(plan.table_positions, input_ids.device)][concepts.unique_inverse]
        if input_ids.shape[0] == 0:
            return self._concept_text_embeds(*filler)[:0]
        if unique_index is None:  # a host sync: the number of distinct rows depends on the data
            length = input_ids.shape[1]
            key = (
                input_ids if attention_mask is None else torch.cat([input_ids, attention_mask.to(input_ids.dtype)], 1)
            )
            unique, inverse = torch.unique(key, dim=0, return_inverse=True)
            mask = None if attention_mask is None else unique[:, length:].to(attention_mask.dtype)
            return self._concept_text_embeds(unique[:, :length], mask)[inverse]
        return self._concept_text_embeds(*_take_rows(input_ids, attention_mask, unique_index))[concepts.unique_inverse]

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        interpolate_pos_encoding: bool = False,
        concept_input_ids: torch.LongTensor | None = None,
        concept_attention_mask: torch.Tensor | None = None,
        concept_image_index: torch.LongTensor | None = None,
        concept_ids: torch.LongTensor | None = None,
        concept_unique_index: torch.LongTensor | None = None,
        concept_unique_inverse: torch.LongTensor | None = None,
        concept_unique_keys: list[int] | None = None,
        negative_input_ids: torch.LongTensor | None = None,
        negative_attention_mask: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
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
        concept_unique_index (`torch.LongTensor` of shape `(num_unique_concepts,)`, *optional*):
            One row of `concept_input_ids` per distinct concept (the rows to encode).
        concept_unique_inverse (`torch.LongTensor` of shape `(num_concepts,)`, *optional*):
            Position in `concept_unique_index` of each concept's row. Without these two, `forward` finds the
            distinct rows itself (`torch.unique`, a host sync) and checks `concept_image_index`'s values (two more).
        concept_unique_keys (`list[int]`, *optional*):
            A host-side identity of each distinct row, equal across processes for the same text; needed by
            `ConceptLossConfig(global_concept_dedup=True)`.
        negative_input_ids (`torch.LongTensor` of shape `(num_negatives, sequence_length)`, *optional*):
            Tokenised hard-negative captions (NegCLIP's baseline, e.g. `ConceptCollator(hard_negatives="swap")`),
            encoded by the text tower and added to the caption loss as captions that match no image (see
            `modeling_concept_clip.losses`). Used only with `return_loss`.
        negative_attention_mask (`torch.Tensor` of shape `(num_negatives, sequence_length)`, *optional*).
        return_loss (`bool`, *optional*): compute the losses.

        Without concept inputs and hard negatives this is exactly the base class's forward, except that in a
        distributed run with `return_loss` the caption loss spans all processes' batches. In a distributed run,
        every process passes concept inputs (possibly with zero rows), or none does; the same for hard negatives.
        """
        concepts = _ConceptInputs(
            concept_input_ids,
            concept_attention_mask,
            concept_image_index,
            concept_ids,
            concept_unique_index,
            concept_unique_inverse,
            concept_unique_keys,
        )
        if concept_input_ids is None:
            if any(value is not None for value in vars(concepts).values()):
                raise ValueError("Concept inputs (concept_image_index, ...) were given without concept_input_ids.")
            concepts = None
        if negative_input_ids is None and negative_attention_mask is not None:
            raise ValueError("negative_attention_mask was given without negative_input_ids.")
        negatives = None
        if negative_input_ids is not None and return_loss:
            _check_text_batch("negative", negative_input_ids, negative_attention_mask)
            negatives = (negative_input_ids, negative_attention_mask)
        world_size, rank = self._loss_world()
        if concepts is None and negatives is None and not (return_loss and world_size > 1):
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
        return self._concept_forward(
            input_ids, pixel_values, attention_mask, position_ids, return_loss, interpolate_pos_encoding, concepts,
            world_size, rank, negatives, **kwargs,
        )  # fmt: skip

    def _concept_forward(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        return_loss: bool | None,
        interpolate_pos_encoding: bool,
        concepts: _ConceptInputs | None,
        world_size: int,
        rank: int,
        negatives: tuple[torch.Tensor, torch.Tensor | None] | None = None,
        **kwargs,
    ):
        """Both towers, the concept and hard-negative embeddings and the C2LIP losses (see `forward`); `concepts`
        is `None` for the caption loss alone (with the hard `negatives`, `(input_ids, attention_mask)`, if any)."""
        if concepts is not None:
            concepts.validate(num_images=pixel_values.shape[0], allow_empty=world_size > 1)

        with_tokens = concepts is not None and self.concept_config.xac_weight > 0
        vision_outputs, image_embeds, image_tokens = self._image_embeds_and_tokens(
            pixel_values, interpolate_pos_encoding, with_tokens, **kwargs
        )
        image_embeds = F.normalize(image_embeds, dim=-1)
        image_tokens = F.normalize(image_tokens, dim=-1) if with_tokens else None
        text_outputs, text_embeds = self._text_embeds(input_ids, attention_mask, position_ids, **kwargs)
        text_embeds = F.normalize(text_embeds, dim=-1)

        concept_embeds = concept_ids = None
        if concepts is not None:
            filler = _take_rows(input_ids, attention_mask, slice(0, 1))
            concept_embeds = F.normalize(self._concept_embeds(concepts, world_size, rank, filler), dim=-1)
            concept_ids = concepts.ids
            if concept_ids is None and self.concept_config.concept_positives == "shared":
                concept_ids = concept_ids_from_tokens(concepts.input_ids, concepts.attention_mask)
        # A process without negatives runs the text tower on one padding row (see `_text_embeds`), as the others.
        negative_embeds = None if negatives is None else F.normalize(self._text_embeds(*negatives)[1], dim=-1)

        logit_scale = self.logit_scale.exp()
        logit_bias = getattr(self, "logit_bias", None)
        # The base classes' logits (same operation order).
        logits_per_text = torch.matmul(text_embeds, image_embeds.t()) * logit_scale
        if logit_bias is not None:
            logits_per_text = logits_per_text + logit_bias

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
                concept_image_index=None if concepts is None else concepts.image_index,
                concept_ids=concept_ids,
                config=self.concept_config,
                world_size=world_size,
                rank=rank,
                negative_embeds=negative_embeds,
            )
        return self._output_class(
            loss=losses.loss if losses else None,
            logits_per_image=logits_per_text.T,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            caption_loss=losses.caption_loss if losses else None,
            npc_loss=losses.npc_loss if losses else None,
            xac_loss=losses.xac_loss if losses else None,
            concept_embeds=concept_embeds,
            image_token_embeds=image_tokens,
            negative_embeds=negative_embeds,
        )


class ConceptCLIPModel(ConceptModelMixin, CLIPModel):
    """`CLIPModel` with C2LIP's concept losses (softmax form, see `modeling_concept_clip.losses`).

    Patch tokens in the joint space: `visual_projection(post_layernorm(last_hidden_state[:, 1:]))`, i.e. each patch
    goes through the same layer norm and projection as the CLS token that gives the image embedding.

    Example (runs offline: a tiny model built from a config, and the collator's batch):

    ```python
    >>> import torch
    >>> from PIL import Image
    >>> from modeling_concept_clip import ConceptCLIPModel, ConceptCollator, ConceptLossConfig
    >>> from modeling_concept_clip.testing_utils import build_tiny_model_and_processor

    >>> plain, processor = build_tiny_model_and_processor("clip")  # or CLIPModel.from_pretrained(...) and its processor
    >>> model = ConceptCLIPModel(plain.config, ConceptLossConfig(concept_positives="shared"))
    >>> model.load_state_dict(plain.state_dict())  # from_pretrained(path, concept_config=...) does both
    <All keys matched successfully>
    >>> rows = [
    ...     {"image": Image.new("RGB", (32, 32), "red"), "caption": "a red circle next to a cat",
    ...      "concepts": ["a red circle", "a cat"]},
    ...     {"image": Image.new("RGB", (32, 32), "blue"), "caption": "a cat on a blue couch",
    ...      "concepts": ["a cat", "a blue couch"]},
    ... ]
    >>> batch = ConceptCollator(processor)(rows)
    >>> del batch["skipped"], batch["num_rows"]  # bookkeeping for the training loop
    >>> outputs = model(**batch, return_loss=True)
    >>> outputs.loss.backward()
    >>> sorted(name for name in ("caption_loss", "npc_loss", "xac_loss") if outputs[name] is not None)
    ['caption_loss', 'npc_loss', 'xac_loss']
    >>> model.save_pretrained("c2lip-clip")  # a plain CLIPModel checkpoint
    ```
    """

    _plain_model_class = CLIPModel
    _output_class = ConceptCLIPOutput
    _causal_text = True
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

    SigLIP pools the last text position and was trained on texts padded to 64 tokens, so its concepts are padded
    the same way (`ConceptCollator(pad_to_max_length=True)`) and each costs a caption's text forward:
    `ConceptLossConfig(concept_gradient_checkpointing=True)` trades that memory for one more concept forward.

    Example (runs offline: a tiny model built from a config, and the collator's batch):

    ```python
    >>> from PIL import Image
    >>> from modeling_concept_clip import ConceptCollator, ConceptLossConfig, ConceptSiglipModel
    >>> from modeling_concept_clip.testing_utils import build_tiny_model_and_processor

    >>> plain, processor = build_tiny_model_and_processor("siglip")  # or SiglipModel.from_pretrained(...)
    >>> config = ConceptLossConfig(concept_positives="owner", concept_gradient_checkpointing=True)
    >>> model = ConceptSiglipModel(plain.config, config)
    >>> model.load_state_dict(plain.state_dict())  # from_pretrained(path, concept_config=config) does both
    <All keys matched successfully>
    >>> rows = [
    ...     {"image": Image.new("RGB", (32, 32), "red"), "caption": "a red circle", "concepts": ["a red circle"]},
    ...     {"image": Image.new("RGB", (32, 32), "blue"), "caption": "a cat and a dog",
    ...      "concepts": ["a cat", "a dog"]},
    ... ]
    >>> batch = ConceptCollator(processor, pad_to_max_length=True)(rows)
    >>> del batch["skipped"], batch["num_rows"]
    >>> outputs = model(**batch, return_loss=True)
    >>> outputs.loss.backward()
    >>> outputs.concept_embeds.shape  # one L2-normalised embedding per concept
    torch.Size([3, 32])
    >>> model.save_pretrained("c2lip-siglip")  # a plain SiglipModel checkpoint
    ```
    """

    _plain_model_class = SiglipModel
    _output_class = ConceptSiglipOutput
    _causal_text = False
    loss_form: LossForm = "sigmoid"

    def _patch_tokens(self, last_hidden_state: torch.Tensor) -> torch.Tensor:
        # last_hidden_state: (B, T, D), after the final layer norm (SigLIP normalises every token).
        head = getattr(self.vision_model, "head", None)
        if head is None:
            raise ValueError("C2LIP on SigLIP needs the attention-pooling head (vision_config.vision_use_head=True).")
        batch_size, num_tokens, dim = last_hidden_state.shape
        return head(last_hidden_state.reshape(batch_size * num_tokens, 1, dim)).view(batch_size, num_tokens, -1)


__all__ = [
    "ConceptCLIPModel",
    "ConceptCLIPOutput",
    "ConceptModelMixin",
    "ConceptSiglipModel",
    "ConceptSiglipOutput",
    "validate_concept_batch",
]
