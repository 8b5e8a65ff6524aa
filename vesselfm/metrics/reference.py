"""The slow whole-volume evaluator that :func:`vesselfm.metrics.compute_metrics` is checked and
benchmarked against (``tests/metrics``, ``scripts/bench_metrics.py``).

Every voxel goes through scikit-learn (confusion matrix, ROC AUC, average precision), skeletons
and Betti numbers of the whole volume through scikit-image (TopCoW's formulas: foreground
26-connected, background 6-connected, β1 = β0 + β2 − χ), surface distances through MONAI. It
needs scikit-learn (the ``dev`` extra) and is not used by the package itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def reference_metrics(
    prob: np.ndarray, label: np.ndarray, spacing: Sequence[float], threshold: float = 0.5
) -> dict[str, float]:
    """The 17 metrics of a probability map ``prob`` against a binary ``label``, shape ``(X, Y, Z)``.

    Defined only where every metric is (both masks non-empty, both classes present).
    """
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
    from skimage.measure import euler_number
    from skimage.measure import label as cc_label
    from skimage.morphology import skeletonize
    from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

    label = np.asarray(label, dtype=np.uint8)
    pred = (np.asarray(prob) >= threshold).astype(np.uint8)
    tn, fp, fn, tp = (
        int(v) for v in confusion_matrix(label.ravel(), pred.ravel(), labels=[0, 1]).ravel()
    )

    def cl_score(volume: np.ndarray, skel: np.ndarray) -> float:
        return np.sum(volume * skel) / np.sum(skel)

    tprec = cl_score(label, skeletonize(pred))
    tsens = cl_score(pred, skeletonize(label))

    def betti(mask: np.ndarray) -> list[int]:
        padded = np.pad(mask, pad_width=1)
        _, b0 = cc_label(padded, return_num=True, connectivity=3)
        chi = euler_number(padded, connectivity=3)
        _, background = cc_label(1 - padded, return_num=True, connectivity=1)
        b2 = background - 1
        return [b0, b0 + b2 - chi, b2]

    bp, bl = betti(pred), betti(label)
    t = [torch.from_numpy(x[None, None]) for x in (pred, label)]
    hd = compute_hausdorff_distance(
        *t, include_background=True, percentile=95, spacing=list(spacing)
    )
    asd = compute_average_surface_distance(
        *t, include_background=True, symmetric=True, spacing=list(spacing)
    )
    return {
        "accuracy": (tp + tn) / label.size,
        "dice": 2 * tp / (2 * tp + fp + fn),
        "jaccard_iou": tp / (tp + fp + fn),
        "precision": tp / (tp + fp),
        "recall_tpr_sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "fpr": fp / (fp + tn),
        "cldice": 2 * tprec * tsens / (tprec + tsens),
        "roc_auc": roc_auc_score(label.ravel(), np.asarray(prob).ravel()),
        "pr_auc_ap": average_precision_score(label.ravel(), np.asarray(prob).ravel()),
        "betti_0": bp[0],
        "betti_1": bp[1],
        "betti_2": bp[2],
        "betti_0_error": abs(bp[0] - bl[0]),
        "betti_1_error": abs(bp[1] - bl[1]),
        "hd95_mm": float(hd),
        "assd_mm": float(asd),
    }
