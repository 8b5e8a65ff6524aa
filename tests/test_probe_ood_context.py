"""scripts/probe_ood_context.py: the three probe tables of a lumen network (README, "Randomised
phantoms"), run here on the random-weight tiny model and small family cases."""

from __future__ import annotations

import numpy as np
import pytest
from script_loader import load_script


@pytest.fixture(scope="module")
def probe():
    return load_script("probe_ood_context")


def test_probe_tables_cover_every_tube_and_family_context(probe, capsys, monkeypatch):
    from vesselfm.data.phantom.ood import OOD_FAMILIES

    # a smaller tube grid (the script's own is 3 levels x 5 contrasts x 5 radii)
    monkeypatch.setattr(probe, "LEVELS", (0.6,))
    monkeypatch.setattr(probe, "CONTRASTS", (0.3, -0.3))
    monkeypatch.setattr(probe, "RADII", (1, 3))
    monkeypatch.setattr(probe, "DISTANT_RADII", (3,))
    monkeypatch.setattr(probe, "DISTANT_LOOKS", ((0.82, 0.12),))

    tubes, context, distant = probe.main(
        ["--cases", "1", "--shape", "32", "32", "32", "--tube-size", "16", "--roi", "32"]
    )
    out = capsys.readouterr().out
    assert "## Straight tubes" in out and "## Families with the context" in out
    assert len(tubes) == len(probe.LEVELS) * len(probe.CONTRASTS)
    for row in tubes:
        assert all(0.0 <= row[f"r{r}"] <= 1.0 for r in probe.RADII)
    assert {(r["family"], r["context"]) for r in context} == {
        (f, c)
        for f in OOD_FAMILIES
        for c in ("3 vox", "8 vox", "16 vox", "8 vox, far blurred 6", "all")
    }
    for family in OOD_FAMILIES:
        rows = {r["context"]: r for r in context if r["family"] == family}
        # flattening the far context changes what the network sees, hence its output
        assert rows["3 vox"]["p_in_label"] != pytest.approx(rows["all"]["p_in_label"], abs=1e-7)
        assert all(0.0 <= r["dice"] <= 1.0 and r["false_voxels"] >= 0 for r in rows.values())
    assert "## A faint tube with air or a bright pool" in out
    assert [r["context"] for r in distant] == list(probe.DISTANT_CONTEXTS)
    by = {r["context"]: r["p_in_tube"] for r in distant}
    assert all(0.0 <= p <= 1.0 for p in by.values())
    # the tube's own voxels are the same in every row; what else the window holds changes them
    assert by["air"] != pytest.approx(by["none"], abs=1e-7)


def test_the_distant_context_keeps_air_far_from_the_tube_and_the_pool_3_voxels_beside_it(probe):
    from scipy import ndimage

    rng = np.random.default_rng(0)
    alone, label = probe.distant_image(64, 5, 0.3, 0.3, "none", rng)
    both, label2 = probe.distant_image(64, 5, 0.3, 0.3, "pool+air", rng)
    assert np.array_equal(label, label2) and label[:, :, 0].sum() > 60  # a radius-5 disc
    dist = ndimage.distance_transform_edt(~label[:, :, 0])
    air = both[:, :, 0] < 0.15
    pool = both[:, :, 0] > 0.9
    assert air.any() and dist[air].min() >= 20
    assert pool.any() and 3 <= dist[pool].min() <= 5  # blur and noise soften the edge
    # the tube itself is the same in both (only the added context and the noise differ)
    assert abs(float(alone[label].mean()) - float(both[label].mean())) < 0.05


def test_cases_are_normalised_with_the_preprocessing_the_checkpoint_records(probe, tmp_path):
    import torch

    from vesselfm.data.phantom.ood import generate_ood_case
    from vesselfm.data.preprocessing import PreprocessConfig

    body = PreprocessConfig(in_plane_size=None, ignore_below=-500)
    path = tmp_path / "body.ckpt"
    torch.save({"state_dict": {}, "vesselfm": {"preprocess": body.to_dict()}}, path)
    assert probe._preprocess(str(path)) == body
    assert probe._preprocess(None) == PreprocessConfig()  # random weights: vesselFM's
    # pool_trees is half air: over the body only, the vessels stand out of the soft tissue by
    # more of [0, 1] (0.36 here against 0.20) and the air is clipped to 0
    case = generate_ood_case("pool_trees", (48, 48, 40), seed=0, index=0)
    image, vessels = case.image.astype(np.float32), case.label.astype(bool)
    tissue = (image > 0) & (image < 100) & ~vessels

    def contrast(x: np.ndarray) -> float:
        return float(np.median(x[vessels]) - np.median(x[tissue]))

    every = probe._normalise(image, PreprocessConfig())
    only_body = probe._normalise(image, body)
    assert contrast(only_body) > 1.5 * contrast(every) > 0.2
    assert float(only_body[image < -900].max()) == 0.0


def test_flattening_keeps_the_label_neighbourhood_and_fills_the_rest_with_the_shell_median(probe):
    label = np.zeros((20, 20, 20), bool)
    label[10, 10, 5:15] = True
    x = np.zeros(label.shape, np.float32)
    x[label] = 1.0
    x[8:13, 8:13, :] += 0.25  # the 2-voxel shell (and beyond it) at 0.25 around the line
    x[0, 0, 0] = 0.9  # far away: flattened
    y = probe.flatten_context(x, label, 3)
    assert y[0, 0, 0] == pytest.approx(0.25) and y.dtype == np.float32
    # within 3 voxels of the label, the image is untouched; the label keeps its value
    assert np.all(y[label] == 1.25) and y[10, 13, 10] == x[10, 13, 10]
    assert y[10, 15, 10] == pytest.approx(0.25) and x[10, 15, 10] == 0.0
    assert probe.flatten_context(x, label, None) is x
    # blurred instead: near voxels kept, far ones the blurred image (the layout, not a constant)
    from scipy import ndimage

    z = probe.flatten_context(x, label, 3, blur=2.0)
    assert np.array_equal(z[label], x[label])
    assert z[0, 0, 0] == pytest.approx(ndimage.gaussian_filter(x, 2.0)[0, 0, 0])
