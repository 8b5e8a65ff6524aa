"""Phantoms on disk in the ImageCAS layout: ``<output>/1-200/1.img.nii.gz`` and
``1.label.nii.gz`` (deterministic gzip, the same affine as qform and sform), one seed per case."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from vesselfm.data.phantom.generate import Phantom, _check_seed, _check_shape, generate_phantom
from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)


IMAGECAS_FOLDER_SIZE = 200


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a dataset written with ``seed`` (independent of ``n``)."""
    return int(
        np.random.SeedSequence([_check_seed(seed), _check_seed(index, "index")]).generate_state(1)[
            0
        ]
    )


def case_paths(output: str | Path, index: int) -> tuple[Path, Path]:
    """``<output>/<lo>-<hi>/<index>.img.nii.gz`` and ``.label.nii.gz`` (ImageCAS folders of 200)."""
    lo = (index - 1) // IMAGECAS_FOLDER_SIZE * IMAGECAS_FOLDER_SIZE + 1
    folder = Path(output) / f"{lo}-{lo + IMAGECAS_FOLDER_SIZE - 1}"
    return folder / f"{index}.img.nii.gz", folder / f"{index}.label.nii.gz"


def save_phantom(phantom: Phantom, image_path: str | Path, label_path: str | Path) -> None:
    """Write ``phantom`` as two NIfTI files (int16 image, uint8 label), each atomically.

    Both carry the same affine as qform and sform (code 1, scanner), ``scl_slope`` 1 and
    ``scl_inter`` 0. gzip output is deterministic (no timestamp, no file name).
    """
    from vesselfm.io import write_volume

    for path, data, what in (
        (image_path, phantom.image.astype(np.int16, copy=False), "image HU"),
        (label_path, phantom.label.astype(np.uint8, copy=False), "coronary lumen"),
    ):
        write_volume(data, phantom.affine, path, f"vesselfm phantom {phantom.case_id} {what}")


def write_phantom_dataset(
    output: str | Path,
    n: int,
    shape: tuple[int, int, int] = (512, 512, 256),
    seed: int = 0,
    start_index: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    layout: str = "imagecas",
    **options: object,
) -> list[tuple[Path, Path]]:
    """Write cases ``start_index .. start_index + n - 1`` in the ImageCAS layout.

    ``<output>/1-200/1.img.nii.gz`` and ``1.label.nii.gz``, ..., ``<output>/201-400/201...``.
    Case ``i`` is ``generate_phantom(shape, case_seed(seed, i), **options)``, so it is the same
    whatever ``n`` is. Every file is written atomically and recorded as ours
    (:mod:`vesselfm.utils.outputs`): phantoms written earlier are replaced, but a folder holding
    files vesselfm did not write (real scans, say) is refused before anything is written.

    Args:
        output: the dataset folder (created).
        n: number of cases, >= 1.
        shape: ``(X, Y, Z)`` voxels of every case.
        seed: dataset seed.
        start_index: index of the first case, >= 1.
        progress: show a tqdm progress bar.
        overwrite: write even where ``output`` holds files vesselfm did not write (those with
            the names of the phantoms are replaced).
        layout: ``imagecas`` (the layout above) or ``imagecasx`` (named segments, centrelines,
            stenosis records, split lists and descriptors: :mod:`.imagecasx`).
        **options: passed to ``generate_phantom`` (``spacing``, ``noise_std``, ``stenoses``,
            ``calcifications``, ``streaks``, ``style``).

    Returns:
        ``[(image_path, label_path), ...]`` in case order (the segmentation for ``imagecasx``).

    Raises:
        ValueError: a bad ``n``, ``start_index``, shape, seed or option.
        UserError: ``output`` holds files vesselfm did not write, and not ``overwrite``.
    """
    from tqdm.auto import tqdm

    from vesselfm.utils.outputs import foreign_files_in

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of cases, got {n!r}; e.g. n=10")
    if (
        isinstance(start_index, bool)
        or not isinstance(start_index, (int, np.integer))
        or start_index < 1
    ):
        raise ValueError(f"start_index must be an integer >= 1, got {start_index!r}")
    allowed = {"spacing", "noise_std", "stenoses", "calcifications", "streaks", "style"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown phantom option(s) {unknown}; allowed: {sorted(allowed)}")
    if layout not in ("imagecas", "imagecasx"):
        raise ValueError(f"layout must be one of ['imagecas', 'imagecasx'], got {layout!r}")
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"output={output} is a file; give a folder for the phantom dataset")
    # a generator never writes into someone else's data: checked before the first file
    foreign = [] if overwrite else foreign_files_in(output)
    if foreign:
        raise UserError(
            f"output={output} holds {len(foreign)} file(s) vesselfm did not write (e.g. "
            f"{foreign[0]}); write the phantoms into an empty or new folder, or pass overwrite=true"
        )

    paths = []
    rows = []
    for index in tqdm(
        range(start_index, start_index + n), desc="phantoms", unit="case", disable=not progress
    ):
        if layout == "imagecasx":
            from vesselfm.data.phantom.imagecasx import save_imagecasx_case

            phantom = generate_phantom(
                shape, case_seed(seed, index), case_id=str(index), coronary_variants=True,
                **options,  # type: ignore[arg-type]
            )  # fmt: skip
            rows.append(save_imagecasx_case(phantom, output))
            paths.append((rows[-1]["image"], rows[-1]["segmentation"]))
            continue
        phantom = generate_phantom(shape, case_seed(seed, index), case_id=str(index), **options)  # type: ignore[arg-type]
        image_path, label_path = case_paths(output, index)
        save_phantom(phantom, image_path, label_path)
        paths.append((image_path, label_path))
    if layout == "imagecasx":
        from vesselfm.data.phantom.imagecasx import write_imagecasx_index

        write_imagecasx_index(output, rows)
    log.info("wrote %d phantom case(s) of shape %s to %s", n, shape, output)
    return paths
