"""Helpers for the inference tests: small synthetic CTA-like NIfTIs and toy networks.

Scans have flipped in-plane axes (``diag(-sx, -sy, sz)``), anisotropic spacing and distinct
qform/sform codes, so that any slip in geometry handling shows up.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

FLIPPED_AFFINE = np.array(
    [
        [-0.75, 0.0, 0.0, 40.5],
        [0.0, -0.625, 0.0, -12.25],
        [0.0, 0.0, 1.25, -80.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


class IdentityNet(nn.Module):
    """Returns its input as logits: sliding window and TTA must give back exactly the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


def tube_phantom(
    shape: tuple[int, int, int] = (48, 40, 32), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU volume with a few bright tubes along Z and one oblique, and its uint8 label."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    label = np.zeros(shape, dtype=bool)
    for cx, cy, r in ((0.3, 0.3, 2.5), (0.7, 0.4, 2.0), (0.5, 0.75, 3.0)):
        label |= (x - cx * shape[0]) ** 2 + (y - cy * shape[1]) ** 2 <= r**2
    # an oblique tube, so that the label is not symmetric under any flip
    t = z / shape[2]
    label |= (x - (0.15 + 0.6 * t) * shape[0]) ** 2 + (y - 0.55 * shape[1]) ** 2 <= 2.0**2
    image = np.where(label, 350.0, -50.0) + rng.normal(0, 25, shape)
    image[: shape[0] // 6] = -1000.0  # air on one side: an asymmetric intensity histogram
    return image.astype(np.int16), label.astype(np.uint8)


def save_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray = FLIPPED_AFFINE,
    qform_code: int = 1,
    sform_code: int = 2,
) -> Path:
    """Write ``data`` as NIfTI with the given affine and qform/sform codes."""
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, str(path))
    return path
