"""The training demo: segment a prepared set's first test scans, then draw them.

``python -m vesselfm.train experiment=phantom_demo`` ends with it (``demo.cases``). The scans are
segmented by :func:`~vesselfm.inference.segment_files`, as ``python -m vesselfm.infer`` segments
them, and drawn by :func:`vesselfm.viz.visualise_case`, as ``python -m vesselfm.visualise`` draws
them: nothing here segments or draws by itself.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

    from vesselfm.data.preprocessing import PreprocessConfig

log = logging.getLogger(__name__)


def run_demo(
    network: nn.Module,
    data_dir: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    cases: int,
    *,
    inference: Mapping[str, Any] | None = None,
    preprocess: PreprocessConfig | None = None,
) -> list[dict[str, Any]]:
    """Segment the first ``cases`` test scans of a prepared set and draw each with its label.

    Writes ``<output_dir>/<case>_pred.nii.gz`` (replacing an earlier demo's) and the views:
    ``<case>_pred.stl``, ``<case>_gt.stl``, ``<case>_3d.html`` and the PNG overlays. A test case
    whose raw scan is no longer on disk is skipped with a warning.

    Args:
        network: the trained network (``(B, 1, X, Y, Z)`` → logits).
        data_dir: the prepared set (its ``manifest.json`` names the raw scans and labels).
        output_dir: where the demo's files go (created if missing).
        cases: how many test cases, in the manifest's order.
        inference: the ``inference`` config group as a mapping (defaults when ``None``).
        preprocess: the preprocessing the network was trained with.

    Returns:
        Per case, :meth:`~vesselfm.inference.SlidingWindowPredictor.predict_file`'s dict plus
        ``"mesh"`` (the prediction's STL) and ``"views"`` (what ``visualise_case`` wrote).

    Raises:
        UserError: a scan that cannot be segmented, or a view that cannot be drawn.
    """
    from vesselfm.data.manifest import load_manifest
    from vesselfm.inference.batch import segment_files
    from vesselfm.inference.predictor import SlidingWindowPredictor
    from vesselfm.viz import visualise_case

    manifest = load_manifest(data_dir) or {}
    tests = [(cid, e) for cid, e in manifest.get("cases", {}).items() if e.get("split") == "test"]
    if not tests:
        log.warning("demo: the prepared set has no test case to segment")
        return []
    inputs: dict[Path, str] = {}
    labels: dict[str, Any] = {}
    for case_id, entry in tests[:cases]:
        image = Path(entry["image_source"])
        if not image.is_file():
            log.warning("demo: case %s has no scan on disk (%s); skipped", case_id, image)
            continue
        inputs[image] = case_id
        labels[case_id] = entry["original_label"]
    if not inputs:
        return []
    predictor = SlidingWindowPredictor.from_config(
        network, dict(inference or {}), preprocess=preprocess, progress=False
    )
    # no mesh here: visualise_case writes <case>_pred.stl (and the ground truth's)
    batch = segment_files(
        inputs, predictor, output_dir, overwrite=True, progress=False, stop_on_error=True
    )
    results = []
    for written in batch.cases:
        case_id = written["case"]
        views = visualise_case(
            written["pred"],
            batch.output_dir,
            gt_path=labels[case_id],
            image_path=written["input"],
            case_id=case_id,
        )
        results.append({**written, "mesh": views.get("pred_stl"), "views": views})
        log.info(
            "demo case %s: mask %s, mesh %s, 3D view %s",
            case_id,
            written["pred"],
            views.get("pred_stl"),
            views.get("html"),
        )
    return results
