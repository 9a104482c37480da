"""OpenVLA's image preprocessing (`PrismaticImageProcessor`), with PIL only.

Per tower: letterbox-pad to a square with the tower's mean colour (`letterbox`), resize (both sides for
`resize-naive`, the shorter side for `resize-crop` and `letterbox`), center-crop, to a float tensor in [0, 1],
normalize with the tower's mean/std; a fused backbone stacks both towers' tensors on the channel dimension.
torchvision's functional transforms, which OpenVLA calls, do exactly these PIL operations for PIL images
(`Image.resize`, `Image.crop` with Python's `round` for the offsets, `ImageOps.expand`), so the pixel values
are the same to the last bit (tests/golden/fixtures/openvla_policy) without torchvision.

The parameters are OpenVLA's `preprocessor_config.json` (its stored `tvf_*` values win, as they do when
OpenVLA loads it), or the vision backbone's timm data config for checkpoints without one (Prismatic runs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from llm_backbones.errors import ImageError, VLACheckpointError
from llm_backbones.vla.vision import VisionBackboneSpec

RESIZE_STRATEGIES = ("resize-naive", "resize-crop", "letterbox")
# A camera frame, not a strip: a thin image would be resized (or letterboxed) to gigabytes
MAX_IMAGE_SIDE = 8192
MAX_ASPECT_RATIO = 16
# PIL's resampling codes, as torchvision stores them in `interpolation`
_PIL_CODES = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


@dataclass(frozen=True)
class TowerTransform:
    """One tower's resize, center crop and normalization (torchvision's functional parameters)."""

    resize: tuple[int, int] | int  # (h, w), or the shorter side
    interpolation: int  # a PIL resampling code
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - pillow is a dependency
        raise ImportError("Images need Pillow: pip install pillow") from exc
    return Image


class ImageProcessor:
    """Images -> `pixel_values [B, 3 * towers, S, S]` (float32), exactly as OpenVLA's processor.

    Build it with `from_vision_spec(spec, strategy)` or `from_preprocessor_config(dict)`; call it with a
    PIL image, a uint8 `H x W x 3` array (numpy or torch), a float array in [0, 1], or a list of those.
    """

    def __init__(
        self,
        transforms: Sequence[TowerTransform],
        strategy: str,
        letterbox_fill: tuple[int, ...] | Sequence[tuple[int, ...]] | None,
    ) -> None:
        """`letterbox_fill`: one RGB fill for every tower (OpenVLA's HF processor), or one per tower
        (Prismatic's training transforms)."""
        if strategy not in RESIZE_STRATEGIES:
            raise VLACheckpointError(
                f"image_resize_strategy={strategy!r} is not one of {RESIZE_STRATEGIES} (Prismatic's)."
            )
        self.transforms = tuple(transforms)
        self.strategy = strategy
        self.letterbox_fills: tuple[tuple[int, ...], ...] | None = None
        if strategy == "letterbox":
            if not letterbox_fill:
                raise VLACheckpointError(
                    "image_resize_strategy='letterbox' needs a fill colour (tvf_letterbox_fill)."
                )
            per_tower = isinstance(letterbox_fill[0], (tuple, list))
            fills = letterbox_fill if per_tower else [letterbox_fill] * len(self.transforms)
            self.letterbox_fills = tuple(tuple(int(v) for v in f) for f in fills)
        self._mean = [torch.tensor(t.mean, dtype=torch.float32)[:, None, None] for t in self.transforms]
        self._std = [torch.tensor(t.std, dtype=torch.float32)[:, None, None] for t in self.transforms]

    @classmethod
    def from_vision_spec(
        cls, spec: VisionBackboneSpec, strategy: str, *, prismatic: bool = False
    ) -> ImageProcessor:
        """From the towers' timm data configs, as OpenVLA's HF processor derives them (crop_pct 1.0; one
        letterbox fill, the last tower's mean), or with `prismatic=True` as Prismatic's training transforms
        (the same resize and crop; each tower letterboxed with its own mean)."""
        transforms = [
            TowerTransform(
                resize=(t.image_size, t.image_size) if strategy == "resize-naive" else t.image_size,
                interpolation=_PIL_CODES[t.interpolation],
                crop=(t.image_size, t.image_size),
                mean=t.mean,
                std=t.std,
            )
            for t in spec.towers
        ]
        fills = [tuple(int(x * 255) for x in t.mean) for t in spec.towers]
        # OpenVLA's HF processor: the fill of the LAST tower's mean wins (its loop overwrites it per tower)
        return cls(transforms, strategy, fills if prismatic else fills[-1])

    @classmethod
    def from_preprocessor_config(cls, config: Mapping[str, Any], *, source: str = "preprocessor_config.json"):
        """From OpenVLA's `preprocessor_config.json` (`PrismaticImageProcessor.save_pretrained`)."""

        def bad(field: str, value: object, accepted: str) -> VLACheckpointError:
            return VLACheckpointError(
                f"{source}: {field}={value!r:.120} is not {accepted}. Restore the file from the original "
                "checkpoint."
            )

        strategy = config.get("image_resize_strategy")
        if strategy not in RESIZE_STRATEGIES:
            raise bad("image_resize_strategy", strategy, f"one of {RESIZE_STRATEGIES}")
        sizes = config.get("input_sizes")
        if not isinstance(sizes, list) or not 1 <= len(sizes) <= 2:
            raise bad("input_sizes", sizes, "a list of one or two [3, S, S]")
        n = len(sizes)
        resize = config.get("tvf_resize_params")
        crop = config.get("tvf_crop_params")
        norm = config.get("tvf_normalize_params")
        for field, value in (
            ("tvf_resize_params", resize),
            ("tvf_crop_params", crop),
            ("tvf_normalize_params", norm),
        ):
            if not isinstance(value, list) or len(value) != n or not all(isinstance(v, dict) for v in value):
                raise bad(field, value, f"a list of {n} objects (one per tower)")
        transforms = []
        for i in range(n):
            size = resize[i].get("size")
            if isinstance(size, list) and len(size) == 1:
                size = size[0]
            if isinstance(size, list) and len(size) == 2 and all(_positive_int(s) for s in size):
                size = (int(size[0]), int(size[1]))
            elif not _positive_int(size):
                raise bad(f"tvf_resize_params[{i}].size", size, "a positive int or [h, w]")
            if resize[i].get("max_size") is not None:
                raise bad(f"tvf_resize_params[{i}].max_size", resize[i].get("max_size"), "null (OpenVLA's)")
            interp = resize[i].get("interpolation", 3)
            if interp not in _PIL_CODES.values() or isinstance(interp, bool):
                raise bad(
                    f"tvf_resize_params[{i}].interpolation",
                    interp,
                    f"a PIL code {sorted(_PIL_CODES.values())}",
                )
            out = crop[i].get("output_size")
            out = [out, out] if _positive_int(out) else out
            if not isinstance(out, list) or len(out) != 2 or not all(_positive_int(s) for s in out):
                raise bad(f"tvf_crop_params[{i}].output_size", out, "[h, w] of positive ints")
            mean, std = norm[i].get("mean"), norm[i].get("std")
            for field, value in (("mean", mean), ("std", std)):
                if not _floats(value, 3) or (field == "std" and min(value) <= 0):
                    raise bad(f"tvf_normalize_params[{i}].{field}", value, "3 finite numbers (std > 0)")
            transforms.append(
                TowerTransform(size, int(interp), (int(out[0]), int(out[1])), tuple(mean), tuple(std))
            )
        fill = config.get("tvf_letterbox_fill")
        if strategy == "letterbox" and not (_floats(fill, 3) and all(0 <= int(f) <= 255 for f in fill)):
            raise bad("tvf_letterbox_fill", fill, "3 ints in 0..255 (letterbox)")
        if config.get("tvf_do_letterbox") not in (None, strategy == "letterbox"):
            raise bad(
                "tvf_do_letterbox",
                config.get("tvf_do_letterbox"),
                f"{strategy == 'letterbox'} for {strategy}",
            )
        return cls(transforms, strategy, tuple(int(f) for f in fill) if strategy == "letterbox" else None)

    @property
    def image_size(self) -> int:
        return self.transforms[0].crop[0]

    def to_pil(self, image: Any) -> Any:
        """`image` as an RGB PIL image; a typed error for anything that is not an RGB camera frame (at most
        `MAX_IMAGE_SIDE` pixels a side, sides within `MAX_ASPECT_RATIO` of each other)."""
        return _check_size(self._to_pil(image))

    def _to_pil(self, image: Any) -> Any:
        Image = _pil()
        if isinstance(image, Image.Image):
            return image.convert("RGB")
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if not isinstance(image, np.ndarray):
            raise ImageError(
                f"An image must be a PIL image or an H x W x 3 array (uint8, or float in [0, 1]), got "
                f"{type(image).__name__}."
            )
        if image.ndim != 3 or image.shape[-1] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ImageError(
                f"An image array must be H x W x 3 (RGB, channels last), got shape {image.shape}. Convert "
                "grayscale/RGBA/CHW images to H x W x 3 first (e.g. np.moveaxis(chw, 0, -1))."
            )
        if image.dtype == np.uint8:
            return Image.fromarray(np.ascontiguousarray(image), mode="RGB")
        if image.dtype.kind == "f":
            if not np.isfinite(image).all() or image.min() < 0.0 or image.max() > 1.0:
                finite = image[np.isfinite(image)]
                span = f"[{finite.min()}, {finite.max()}]" if finite.size else "no finite value"
                raise ImageError(
                    f"A float image must hold finite values in [0, 1]; this one spans {span}"
                    f"{' and holds NaN/inf' if finite.size != image.size else ''}. Pass uint8 pixels, or "
                    "scale to [0, 1]."
                )
            return Image.fromarray((image * 255.0).round().astype(np.uint8), mode="RGB")
        raise ImageError(
            f"An image array must be uint8 (0..255) or float (0..1), got dtype {image.dtype}. Cast it, e.g. "
            "image.astype(np.uint8)."
        )

    def _tower(self, image: Any, i: int) -> torch.Tensor:
        _pil()
        t = self.transforms[i]
        width, height = image.size
        if isinstance(t.resize, tuple):
            new_h, new_w = t.resize
        else:  # the shorter side to t.resize, the other scaled (torchvision's rounding: int())
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = t.resize, int(t.resize * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_w, new_h) != (width, height):
            image = image.resize((new_w, new_h), resample=t.interpolation)
        crop_h, crop_w = t.crop
        if crop_w > new_w or crop_h > new_h:  # torchvision pads with zeros first, then crops
            left, top = (
                (crop_w - new_w) // 2 if crop_w > new_w else 0,
                (crop_h - new_h) // 2 if crop_h > new_h else 0,
            )
            right = (crop_w - new_w + 1) // 2 if crop_w > new_w else 0
            bottom = (crop_h - new_h + 1) // 2 if crop_h > new_h else 0
            image = _expand(image, (left, top, right, bottom), (0, 0, 0))
            new_w, new_h = image.size
        top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        image = image.crop((left, top, left + crop_w, top + crop_h))
        array = np.array(image, dtype=np.uint8, copy=True)
        tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous().to(torch.float32).div(255)
        return tensor.sub(self._mean[i]).div(self._std[i])

    def __call__(self, images: Any) -> torch.Tensor:
        """`pixel_values [B, 3 * towers, S, S]` (float32) of one image or a list of images."""
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise ImageError("No images given: pass one image or a non-empty list of images.")
        out = []
        for image in batch:
            pil = self.to_pil(image)
            padded: dict[tuple[int, ...], Any] = {}
            towers = []
            for i in range(len(self.transforms)):
                tower_image = pil
                if self.letterbox_fills is not None:
                    fill = self.letterbox_fills[i]
                    if fill not in padded:
                        width, height = pil.size
                        side = max(width, height)
                        h_pad, v_pad = int((side - width) / 2), int((side - height) / 2)
                        padded[fill] = _expand(pil, (h_pad, v_pad, h_pad, v_pad), fill)
                    tower_image = padded[fill]
                towers.append(self._tower(tower_image, i))
            out.append(torch.cat(towers, dim=0))
        return torch.stack(out)


def _check_size(image: Any) -> Any:
    width, height = image.size
    if max(width, height) > MAX_IMAGE_SIDE or max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageError(
            f"An image of {height} x {width} pixels is refused: accepted are camera frames of at most "
            f"{MAX_IMAGE_SIDE} pixels a side whose long side is at most {MAX_ASPECT_RATIO}x the short one "
            "(resizing or letterboxing a thin strip would take gigabytes). Send the camera frame itself."
        )
    return image


def _expand(image: Any, border: tuple[int, int, int, int], fill: tuple[int, ...]) -> Any:
    """PIL's ImageOps.expand (what torchvision's constant pad calls): a border of `fill` around `image`."""
    Image = _pil()
    left, top, right, bottom = border
    width, height = image.size
    out = Image.new(image.mode, (width + left + right, height + top + bottom), tuple(fill))
    out.paste(image, (left, top))
    return out


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _floats(value: object, n: int) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == n
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


__all__ = ["ImageProcessor", "MAX_ASPECT_RATIO", "MAX_IMAGE_SIDE", "RESIZE_STRATEGIES", "TowerTransform"]
