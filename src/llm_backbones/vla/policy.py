"""`VLAPolicy`: camera image + instruction -> robot action, as OpenVLA's `predict_action`, and batched.

One step: preprocess the image (`ImageProcessor`), run the vision towers and the projector, splice the
patches after BOS of OpenVLA's prompt (`In: What action should the robot take to {instruction}?\\nOut: `, on
LLaMA-2 ending with the "▁" 29871 OpenVLA appends), greedily generate `action_dim` tokens, map them to bin
centres and un-normalize them with the checkpoint's statistics.

Decoding never stops a control loop and is never silent: by default each token is chosen among the action
tokens (a logits mask); a step where the unmasked argmax was another token is counted
(`policy.stray_tokens`) and logged. `constrain_to_actions=False` is OpenVLA's exact rule: the argmax over the
whole vocabulary, then `clip(vocab_size - id - 1, 0, bins - 2)` (a stray token becomes an edge bin).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from llm_backbones.data.examples import vla_prompt
from llm_backbones.data.norm_stats import check_unnorm_key, unnormalize_actions
from llm_backbones.errors import ImageError, InputShapeError
from llm_backbones.persistence.openvla import LoadedVLA
from llm_backbones.runtime.generation import generate_greedy, generate_greedy_in_range, prepared_generation
from llm_backbones.vla.image_processing import ImageProcessor
from llm_backbones.vla.vision import Projector, VisionBackbone

logger = logging.getLogger(__name__)

# OpenVLA's predict_action appends this ("▁", LLaMA-2) when the prompt does not end with it
OPENVLA_SEPARATOR_ID = 29871
MAX_INSTRUCTION_CHARS = 2000


def check_instruction(instruction: Any) -> str:
    """`instruction` if it is a robot instruction OpenVLA's prompt can hold: a non-empty string of at most
    `MAX_INSTRUCTION_CHARS` characters; `InputShapeError` otherwise."""
    if not isinstance(instruction, str) or not instruction.strip():
        raise InputShapeError(
            f"instruction must be a non-empty string, got {instruction!r:.80}. Say what the robot should "
            "do, e.g. 'pick up the red block'."
        )
    if len(instruction) > MAX_INSTRUCTION_CHARS:
        raise InputShapeError(
            f"instruction has {len(instruction)} characters, more than {MAX_INSTRUCTION_CHARS}: that is "
            "not a robot instruction. Shorten it."
        )
    return instruction


@dataclass(eq=False)
class VLAPolicy:
    """A loaded VLA: `predict_action(image, instruction)` -> `np.ndarray [action_dim]` in the robot's units.

    Attributes: `llm` (the LLM half, `LoadedVLA`: backbone, tokenizer, action tokenizer, norm_stats),
    `vision` (the towers), `projector`, `image_processor`, `constrain_to_actions`, and `stray_tokens` (how
    many decoded tokens the action mask changed so far).
    """

    llm: LoadedVLA
    vision: VisionBackbone
    projector: Projector
    image_processor: ImageProcessor
    constrain_to_actions: bool = True
    stray_tokens: int = field(default=0)
    last_tokens: torch.Tensor | None = field(default=None, repr=False)  # the ids the last call decoded

    # --- what it is ---
    @property
    def backbone(self) -> Any:
        return self.llm.backbone

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def action_tokenizer(self) -> Any:
        return self.llm.action_tokenizer

    @property
    def norm_stats(self) -> dict[str, Any]:
        return self.llm.norm_stats

    @property
    def vision_backbone_id(self) -> str:
        return self.vision.spec.vision_backbone_id

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    def get_action_dim(self, unnorm_key: str | None = None) -> int:
        return self.llm.get_action_dim(unnorm_key)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> VLAPolicy:
        """Move (and cast) every part; returns the policy. As `nn.Module.to`, a dtype alone may come first:
        `policy.to(torch.bfloat16)`."""
        if isinstance(device, torch.dtype):
            if dtype is not None:
                raise TypeError(f"policy.to() got two dtypes, {device} and {dtype}; pass (device, dtype).")
            device, dtype = None, device
        for module in (self.backbone, self.vision, self.projector):
            module.to(device=device, dtype=dtype)
        return self

    def modules(self) -> tuple[nn.Module, ...]:
        return (self.vision, self.projector, self.backbone)

    # --- the steps ---
    def process_images(self, images: Any) -> torch.Tensor:
        """OpenVLA's `pixel_values` (float32, on CPU) of one image or a list."""
        return self.image_processor(images)

    def prompt_ids(self, instruction: str) -> torch.Tensor:
        """OpenVLA's prompt for `instruction` (lower-cased), ending where the actions begin."""
        check_instruction(instruction)
        return vla_prompt(self.tokenizer, self.backbone.prompt_builder_fn, instruction)

    def check_inputs(self, image: Any, instruction: Any, unnorm_key: Any = None) -> tuple[Any, str]:
        """Check one observation without running the model, raising what `predict_action` would raise
        (`ImageError`, `InputShapeError`, `NormStatsError`). Returns the image as the RGB PIL image the
        processor takes (`predict_action` on it gives the same action) and the dataset key of `norm_stats`
        the action is un-normalized with. Uses neither the tokenizer nor the model, so a server can call it
        from any thread while the model runs."""
        pil = self.image_processor.to_pil(image)
        check_instruction(instruction)
        return pil, check_unnorm_key(self.norm_stats, unnorm_key)

    @torch.inference_mode()
    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Projected patch embeddings `[B, P, llm_dim]` of `pixel_values`."""
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
            raise ImageError(
                "pixel_values must be a float tensor [B, C, S, S] from the image processor, got "
                f"{getattr(pixel_values, 'dtype', type(pixel_values).__name__)}."
            )
        if not bool(torch.isfinite(pixel_values).all()):
            raise ImageError("pixel_values hold NaN/inf; make them with policy.process_images.")
        pixel_values = pixel_values.to(self.device)
        return self.projector(self.vision(pixel_values))

    @torch.inference_mode()
    def _generate(
        self, prompts: Sequence[torch.Tensor], patches: torch.Tensor, action_dim: int, constrain: bool
    ) -> torch.Tensor:
        """Left-pad `[BOS, patches, prompt...]` rows, greedy-decode `action_dim` tokens: ids `[B, N]`."""
        embeds, mask = self._splice(prompts, patches)
        tokens = self._decode_tokens(embeds, mask, action_dim, constrain)
        self.last_tokens = tokens.cpu()
        return tokens

    def _splice(
        self, prompts: Sequence[torch.Tensor], patches: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`[BOS, patches, prompt...]` rows, left-padded: (inputs_embeds, attention_mask)."""
        embed = self.backbone.embed_input_ids
        rows = []
        for ids, row_patches in zip(prompts, patches, strict=True):
            tokens = embed(ids.to(self.device)[None])[0]
            rows.append(torch.cat([tokens[:1], row_patches.to(tokens.dtype), tokens[1:]], dim=0))
        length = max(r.shape[0] for r in rows)
        embeds = rows[0].new_zeros((len(rows), length, rows[0].shape[-1]))
        mask = torch.zeros((len(rows), length), dtype=torch.long, device=self.device)
        for i, row in enumerate(rows):
            embeds[i, length - row.shape[0] :] = row
            mask[i, length - row.shape[0] :] = 1
        return embeds, mask

    def _decode_tokens(
        self, embeds: torch.Tensor, mask: torch.Tensor, action_dim: int, constrain: bool
    ) -> torch.Tensor:
        model = self.backbone.llm
        low, high = self.action_tokenizer.token_id_range
        if not constrain:
            return generate_greedy(
                model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=action_dim
            )
        if prepared_generation(model) is not None:  # the compiled fast path: unmasked, checked afterwards
            try:
                tokens = generate_greedy(
                    model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=action_dim
                )
            except InputShapeError as exc:  # a batch size or prompt length not prepared: eager instead
                logger.warning("Compiled generation cannot take this call (%s); decoding it eagerly.", exc)
            else:
                if bool(((tokens >= low) & (tokens <= high)).all()):
                    return tokens
        tokens, free = generate_greedy_in_range(
            model, (low, high), inputs_embeds=embeds, attention_mask=mask, max_new_tokens=action_dim
        )
        changed = free != tokens
        if bool(changed.any()):
            n = int(changed.sum())
            self.stray_tokens += n
            rows_hit = sorted({int(r) for r in changed.nonzero()[:, 0]})
            logger.warning(
                "The action mask changed %d of %d decoded tokens (rows %s; the model's argmax was e.g. %s, "
                "not an action token); %d so far. constrain_to_actions=False gives OpenVLA's clipped "
                "decoding.",
                n,
                tokens.numel(),
                rows_hit[:8],
                self.tokenizer.convert_ids_to_tokens(free[changed][:3].tolist()),
                self.stray_tokens,
            )
        return tokens

    @torch.inference_mode()
    def first_step_logits(self, image: Any, instruction: str) -> torch.Tensor:
        """The logits `[vocab]` (float32, CPU) the first action token is chosen from: for checking a
        checkpoint against another implementation."""
        embeds, mask = self._splice(
            [self.prompt_ids(instruction)], self.embed_images(self.process_images(image))
        )
        out = self.backbone.llm(inputs_embeds=embeds, attention_mask=mask, use_cache=False, logits_to_keep=1)
        return out.logits[0, -1].float().cpu()

    def _decode(self, tokens: torch.Tensor, constrain: bool) -> np.ndarray:
        """Token ids -> normalized actions in [-1, 1] (float64); unconstrained, OpenVLA's clipping."""
        return self.action_tokenizer.decode(tokens.cpu(), strict=constrain).numpy()

    def _unnormalize(self, normalized: np.ndarray, unnorm_key: str | None) -> np.ndarray:
        return unnormalize_actions(normalized, self.norm_stats, unnorm_key)  # finite, or ActionError

    def _constrain(self, value: bool | None) -> bool:
        if value is None:
            return self.constrain_to_actions
        if not isinstance(value, bool):
            raise InputShapeError(
                f"constrain_to_actions must be True, False or None (the policy's setting), got {value!r:.40}."
            )
        return value

    # --- the public calls ---
    def predict_actions(
        self,
        images: Sequence[Any],
        instructions: Sequence[str],
        unnorm_key: str | None = None,
        *,
        constrain_to_actions: bool | None = None,
    ) -> np.ndarray:
        """A batch: `[B, action_dim]` actions, row i for (images[i], instructions[i]). Prompts are
        left-padded with positions counted from each row's first token, so each row equals its
        `predict_action` (fp32). `images` may be one array `[B, H, W, 3]`."""
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        if (
            isinstance(images, (str, bytes))
            or not isinstance(images, Sequence)
            or isinstance(instructions, str)
        ):
            raise InputShapeError(
                "predict_actions takes a list of images and a list of instructions (one per image); for one "
                "observation use predict_action(image, instruction)."
            )
        instructions = list(instructions) if not isinstance(instructions, str) else instructions
        if len(images) != len(instructions) or not images:
            raise InputShapeError(
                f"predict_actions got {len(images)} images and {len(instructions)} instructions; pass one "
                "instruction per image (at least one)."
            )
        action_dim = self.get_action_dim(unnorm_key)
        constrain = self._constrain(constrain_to_actions)
        prompts = [self.prompt_ids(text) for text in instructions]
        patches = self.embed_images(self.process_images(list(images)))
        tokens = self._generate(prompts, patches, action_dim, constrain)
        return self._unnormalize(self._decode(tokens, constrain), unnorm_key)

    def predict_action(
        self,
        image: Any = None,
        instruction: str | None = None,
        unnorm_key: str | None = None,
        *,
        input_ids: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        constrain_to_actions: bool | None = None,
        do_sample: bool = False,
        **kwargs: Any,
    ) -> np.ndarray:
        """One action `[action_dim]` in the robot's units, OpenVLA's `predict_action`.

        Either `predict_action(image, instruction, unnorm_key=...)`, or OpenVLA's call shape with its
        processor's output, `predict_action(input_ids=..., pixel_values=..., attention_mask=...,
        unnorm_key=...)`: the 29871 OpenVLA appends is appended here too when missing.
        """
        if kwargs:
            raise InputShapeError(
                f"predict_action got unexpected arguments {sorted(kwargs)}; it takes image, instruction, "
                "unnorm_key (or input_ids, pixel_values, attention_mask as OpenVLA's processor returns them)."
            )
        if do_sample is not False:
            raise InputShapeError(
                f"do_sample={do_sample!r:.40} is not supported: OpenVLA's actions are greedy. Drop it."
            )
        constrain = self._constrain(constrain_to_actions)
        if input_ids is None and pixel_values is None:
            return self.predict_actions([image], [instruction], unnorm_key, constrain_to_actions=constrain)[0]
        if image is not None or instruction is not None:
            raise InputShapeError(
                "Pass either image and instruction, or input_ids and pixel_values, not both."
            )
        vocab = len(self.tokenizer)
        if (
            not isinstance(input_ids, torch.Tensor)
            or input_ids.dim() != 2
            or input_ids.shape[0] != 1
            or input_ids.shape[1] < 1
            or input_ids.dtype not in (torch.int64, torch.int32)
        ):
            raise InputShapeError(
                "input_ids must be a [1, tokens] integer tensor with at least BOS (the processor's output "
                f"for one prompt), got {getattr(input_ids, 'dtype', '')} "
                f"{getattr(input_ids, 'shape', type(input_ids).__name__)}."
            )
        if bool(((input_ids < 0) | (input_ids >= vocab)).any()):
            raise InputShapeError(
                f"input_ids hold ids outside the tokenizer's 0..{vocab - 1}: "
                f"{input_ids[(input_ids < 0) | (input_ids >= vocab)][:5].tolist()}. Make them with its "
                "tokenizer."
            )
        if attention_mask is not None and (
            not isinstance(attention_mask, torch.Tensor)
            or tuple(attention_mask.shape) != tuple(input_ids.shape)
            or not bool(attention_mask.bool().all())
        ):
            raise InputShapeError(
                f"attention_mask must be a tensor of ones of input_ids' shape {tuple(input_ids.shape)} (one "
                f"unpadded prompt), got {attention_mask!r:.80}."
            )
        if (
            not isinstance(pixel_values, torch.Tensor)
            or pixel_values.dim() != 4
            or pixel_values.shape[0] != 1
        ):
            raise ImageError(
                "pixel_values must be [1, C, S, S] (the processor's output for one image), got "
                f"{getattr(pixel_values, 'shape', type(pixel_values).__name__)}."
            )
        ids = input_ids[0].to(torch.long).cpu()
        if int(ids[-1]) != OPENVLA_SEPARATOR_ID:
            ids = torch.cat([ids, torch.tensor([OPENVLA_SEPARATOR_ID])])
        action_dim = self.get_action_dim(unnorm_key)
        tokens = self._generate([ids], self.embed_images(pixel_values), action_dim, constrain)
        return self._unnormalize(self._decode(tokens, constrain), unnorm_key)[0]


__all__ = ["MAX_INSTRUCTION_CHARS", "VLAPolicy", "check_instruction"]
