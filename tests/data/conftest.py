"""Fixtures for the data tests: small phantom datasets in the ImageCAS layout."""

from __future__ import annotations

from pathlib import Path

import pytest

SHAPE = (64, 64, 48)


@pytest.fixture(scope="session")
def phantom_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six 64×64×48 phantoms, ``<raw>/1-200/{1..6}.img.nii.gz`` + ``.label.nii.gz`` (read-only: copy to modify)."""
    from vesselfm.data.phantom import write_phantom_dataset

    raw = tmp_path_factory.mktemp("phantoms") / "raw"
    write_phantom_dataset(raw, 6, shape=SHAPE, seed=7, progress=False)
    return raw


@pytest.fixture(scope="session")
def prepared(phantom_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``phantom_source`` prepared on its own grid, split at random (read-only)."""
    from vesselfm.data.prepare import PrepareOptions, prepare_dataset
    from vesselfm.data.preprocessing import PreprocessConfig

    out = tmp_path_factory.mktemp("prepared")
    options = PrepareOptions(preprocess=PreprocessConfig(in_plane_size=None))
    prepare_dataset(
        phantom_source, out, split="random", seed=0, options=options, workers=1, progress=False
    )
    return out


@pytest.fixture(scope="session")
def imagecasx_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 64×64×48 phantoms in the ImageCAS-X layout, seed 0 (read-only: copy to modify).

    Case 2 has a ramus (code 8), case 3 is left-dominant (code 12), case 5 co-dominant (13).
    """
    from vesselfm.data.phantom import write_phantom_dataset

    root = tmp_path_factory.mktemp("imagecasx") / "root"
    write_phantom_dataset(root, 5, shape=SHAPE, seed=0, progress=False, layout="imagecasx")
    return root
