"""Test-time augmentation: nnU-Net-style mirroring and vesselFM's scales, inversion and histogram
equalisation, merged by mean or max.

Each augmentation is a pair of functions: ``forward`` maps the normalised image ``(B, 1, X, Y, Z)``
to the network's input, ``inverse`` maps the network's logits back onto the original grid. The
predictor runs the sliding window once per augmentation and merges the logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vesselfm.utils.config import checked_fields

MERGE_MODES = ("mean", "max")


@dataclass(frozen=True)
class TTAConfig:
    """Which augmentations to run and how to merge them (all off by default).

    Attributes:
        flips: mirror axes of ``(X, Y, Z)`` (0, 1, 2): ``()`` no mirroring, ``"all"`` every one of
            the 7 non-empty axis combinations (nnU-Net), or a list of axis tuples such as
            ``[[0], [1], [0, 1]]``. The unflipped image is always included.
        scales: resampling factors (vesselFM: e.g. ``[1.0, 1.5]``); the network sees the image
            zoomed by each factor and its logits are resampled back. ``[1.0]`` is off.
        invert: use ``1 - image`` when the image's mean exceeds ``invert_mean_thresh``
            (vesselFM's switch for bright-background modalities).
        invert_mean_thresh: mean intensity above which ``invert`` flips intensities.
        equalize_hist: histogram-equalise the image first (skimage, ``hist_bins`` bins).
        hist_bins: bins for ``equalize_hist``.
        merge: ``"mean"`` or ``"max"`` of the logits (vesselFM's ``merging.max``).
    """

    flips: tuple[tuple[int, ...], ...] = ()
    scales: tuple[float, ...] = (1.0,)
    invert: bool = False
    invert_mean_thresh: float = 0.5
    equalize_hist: bool = False
    hist_bins: int = 256
    merge: str = "mean"

    def __post_init__(self) -> None:
        object.__setattr__(self, "flips", normalize_flips(self.flips))
        scales = tuple(float(s) for s in (self.scales or (1.0,)))
        if any(s <= 0 for s in scales):
            raise ValueError(f"inference.tta.scales must be positive factors, got {list(scales)}")
        object.__setattr__(self, "scales", scales)
        if self.merge not in MERGE_MODES:
            raise ValueError(
                f"inference.tta.merge must be one of {MERGE_MODES}, got {self.merge!r}"
            )
        if int(self.hist_bins) < 2:
            raise ValueError(f"inference.tta.hist_bins must be >= 2, got {self.hist_bins}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | TTAConfig | None) -> TTAConfig:
        """Build from the ``inference.tta`` config; unknown keys raise, listing the allowed ones."""
        if isinstance(cfg, TTAConfig):
            return cfg
        cfg = checked_fields(cls, cfg, "inference.tta")
        if cfg.get("scales") is not None:
            cfg["scales"] = tuple(cfg["scales"])
        return cls(**cfg)

    @property
    def enabled(self) -> bool:
        return bool(self.flips) or self.scales != (1.0,) or self.invert or self.equalize_hist

    def __len__(self) -> int:
        """Number of network passes (sliding windows) per volume."""
        return (len(self.flips) + 1) * len(self.scales)


def normalize_flips(flips: Any) -> tuple[tuple[int, ...], ...]:
    """``"all"`` / ``True`` / a list of axis lists → a tuple of sorted, unique, non-empty axis tuples."""
    if (
        flips is None
        or flips is False
        or (isinstance(flips, str) and flips.lower() in {"", "none", "off"})
    ):
        return ()
    if flips is True or (isinstance(flips, str) and flips.lower() == "all"):
        return tuple(c for r in (1, 2, 3) for c in itertools.combinations((0, 1, 2), r))
    if isinstance(flips, str):
        raise ValueError(
            f"inference.tta.flips must be 'all', [] or a list of axis lists, got {flips!r}"
        )
    out: list[tuple[int, ...]] = []
    for item in flips:
        axes = (int(item),) if isinstance(item, int | np.integer) else tuple(int(a) for a in item)
        if not axes or any(a not in (0, 1, 2) for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(
                f"inference.tta.flips entries must be non-empty lists of distinct axes in (0, 1, 2), got {list(item) if not isinstance(item, int) else item}"
            )
        axes = tuple(sorted(axes))
        if axes not in out:
            out.append(axes)
    return tuple(out)


@dataclass(frozen=True)
class Augmentation:
    """One TTA member: ``forward(image) -> network input``, ``inverse(logits) -> original grid``."""

    name: str
    forward: Callable[[torch.Tensor], torch.Tensor]
    inverse: Callable[[torch.Tensor], torch.Tensor]


def flip(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """Mirror spatial ``axes`` (0, 1, 2 = X, Y, Z) of a ``(B, C, X, Y, Z)`` tensor; its own inverse."""
    return torch.flip(x, dims=[2 + a for a in axes]) if axes else x


def rescale(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Trilinear resampling of ``(B, C, X, Y, Z)`` to spatial ``shape`` (identity when equal)."""
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape[2:]) == shape:
        return x
    return F.interpolate(x, size=shape, mode="trilinear", align_corners=False)


def scaled_shape(shape: Sequence[int], factor: float) -> tuple[int, ...]:
    """``shape`` zoomed by ``factor``, at least one voxel per axis."""
    return tuple(max(1, int(round(int(s) * factor))) for s in shape)


def intensity_transform(image: torch.Tensor, config: TTAConfig) -> torch.Tensor:
    """vesselFM's intensity TTA on a normalised ``(B, 1, X, Y, Z)`` image: inversion, then
    histogram equalisation (per volume)."""
    if config.invert and float(image.mean()) > config.invert_mean_thresh:
        image = 1.0 - image
    if config.equalize_hist:
        from skimage.exposure import equalize_hist

        flat = image.detach().float().cpu().numpy()
        eq = np.stack(
            [
                equalize_hist(v, nbins=int(config.hist_bins))
                for v in flat.reshape(-1, *flat.shape[2:])
            ]
        )
        image = torch.from_numpy(eq.astype(np.float32).reshape(flat.shape)).to(image.device)
    return image


def augmentations(spatial_shape: Sequence[int], config: TTAConfig) -> Iterator[Augmentation]:
    """The TTA members for a volume of ``spatial_shape``: every scale × (identity + each flip)."""
    spatial_shape = tuple(int(s) for s in spatial_shape)
    for factor in config.scales:
        target = scaled_shape(spatial_shape, factor)
        for axes in ((),) + tuple(config.flips):
            name = f"scale{factor:g}" + (f"-flip{''.join(map(str, axes))}" if axes else "")

            def forward(
                x: torch.Tensor, target: tuple[int, ...] = target, axes: tuple[int, ...] = axes
            ) -> torch.Tensor:
                return flip(rescale(x, target), axes)

            def inverse(y: torch.Tensor, axes: tuple[int, ...] = axes) -> torch.Tensor:
                return rescale(flip(y, axes), spatial_shape)

            yield Augmentation(name, forward, inverse)


class LogitMerger:
    """Running mean or max of logits, so that TTA never holds more than two volumes."""

    def __init__(self, mode: str = "mean") -> None:
        if mode not in MERGE_MODES:
            raise ValueError(f"inference.tta.merge must be one of {MERGE_MODES}, got {mode!r}")
        self.mode = mode
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, logits: torch.Tensor) -> None:
        logits = logits.float()
        if self.total is None:
            self.total = logits.clone()
        elif self.mode == "mean":
            self.total.add_(logits)
        else:
            torch.maximum(self.total, logits, out=self.total)
        self.count += 1

    def result(self) -> torch.Tensor:
        if self.total is None:
            raise RuntimeError("no logits were merged")
        return self.total / self.count if self.mode == "mean" and self.count > 1 else self.total
