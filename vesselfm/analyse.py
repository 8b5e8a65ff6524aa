"""Analyse coronary masks: ``python -m vesselfm.analyse mask=<file|folder|glob> output=<dir>``.

Each mask (ours, a ground truth, another tool's; any format :func:`vesselfm.io.read_volume`
reads) becomes a centreline tree with named branches, lumen diameters, stenoses and a CAD-RADS
category (:mod:`vesselfm.analysis`; automated, not a diagnosis), written as
``<case>_analysis.json``, ``<case>_branches.csv``, ``<case>_report.md`` and
``<case>_profiles.png`` (with ``image=`` also ``<case>_cpr.png``, the straightened
reformations), with ``summary.csv``/``summary.md`` over all cases.

``analyse(cfg)`` does the work and returns the results; ``main()`` is the CLI.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vesselfm.utils.cli import UserError, hydra_entrypoint

log = logging.getLogger(__name__)

#: roles of files that are never masks: scans and probability maps
NOT_MASKS = ("image", "probability")


def find_masks(spec: str) -> dict[str, Path]:
    """Mask files named by ``mask=`` (a file, a folder or a glob), by case id.

    In a folder or glob, scans (``<case>.img.*``, ``<case>_0000.*``) and probability maps
    (``<case>_prob.*``) are left out; ids follow :func:`vesselfm.io.unique_case_ids`.

    Raises:
        UserError: nothing named, or no mask in the folder.
    """
    from vesselfm.io import case_id, role_of, unique_case_ids
    from vesselfm.io.discovery import list_volumes

    found, kind = list_volumes(str(spec), "mask", "a mask file, a folder or a quoted glob")
    if kind != "file":
        found = [p for p in found if role_of(p) not in NOT_MASKS]
    if not found:
        raise UserError(
            f"mask={spec}: the {kind} holds no masks (<case>_pred.*, <case>.label.*, "
            "<case>.coronary.* or <case>.*); point mask= at mask files"
        )
    if kind == "file":
        return {case_id(found[0]): found[0]}
    ids = unique_case_ids(sorted(found), role=None, key="mask")  # type: ignore[arg-type]
    return {case: path for path, case in ids.items()}


def _per_case(
    key: str,
    spec: Any,
    masks: dict[str, Path],
    noun: str,
    example: str,
    finder: Callable[[str], Callable[[str], Path | None]],
    without: str = "",
) -> dict[str, Path | None]:
    """``{case: file}`` for an optional ``key=`` that pairs a file with each mask: one file for
    one mask, or a folder/glob whose files ``finder(spec)`` looks up by case id.

    Raises:
        UserError: one file for several masks, or a case without its file.
    """
    if spec in (None, ""):
        return dict.fromkeys(masks)
    path = Path(str(spec)).expanduser()
    if path.is_file():
        if len(masks) != 1:
            raise UserError(
                f"{key}={spec} is one file but mask= names {len(masks)} masks; give a folder "
                f"of {noun}s named by case ({example})"
            )
        return {case: path for case in masks}
    lookup = finder(str(spec))
    out = {case: lookup(case) for case in masks}
    missing = [case for case, p in out.items() if p is None]
    if missing:
        raise UserError(
            f"{key}={spec}: no {noun} for case(s) {', '.join(missing[:5])}; name them "
            f"{example} (or leave {key}= out{without})"
        )
    return out


def _segments_for(spec: str | None, masks: dict[str, Path]) -> dict[str, Path | None]:
    from vesselfm.io import find_labels, match_label

    def finder(folder: str) -> Callable[[str], Path | None]:
        # the same folder may hold both: a segment map is a mask too (non-zero is lumen)
        labels = find_labels(folder, key="segments")
        return lambda case: match_label(case, labels)

    return _per_case(
        "segments",
        spec,
        masks,
        "segment map",
        "<case>.coronary.nii.gz",
        finder,
        " for names by anatomy",
    )


def _images_for(spec: Any, masks: dict[str, Path]) -> dict[str, Path | None]:
    """``{case: scan}`` for ``image=`` (one file for one mask, or a folder/glob of scans paired
    by case id: ``<case>.img.nii.gz``, ``<case>_0000.nii.gz``, ``<case>.nii.gz``)."""
    from vesselfm.io import case_id, find_inputs

    def finder(folder: str) -> Callable[[str], Path | None]:
        scans = {case_id(p, "image"): p for p in find_inputs(folder)}
        return scans.get

    return _per_case("image", spec, masks, "scan", "<case>.img.nii.gz", finder)


def _read_image(path: Path, mask: tuple[Any, Any]) -> Any:
    """The scan at ``path`` as an array, checked to be on the mask's grid."""
    import numpy as np

    from vesselfm.io import Volume, check_same_grid, read_volume

    scan = read_volume(path)
    array, affine = mask
    check_same_grid(
        scan,
        Volume(np.asarray(array), np.asarray(affine), where="mask"),
        hint="image= must be the scan the mask was segmented from",
    )
    return np.asarray(scan.array)


def analyse(cfg: DictConfig) -> dict[str, Any]:
    """Analyse every mask of ``cfg.mask`` into ``cfg.output``.

    Returns:
        ``{"results": {case: analysis dict}, "paths": {case: {kind: path}}, "summary": paths}``.

    Raises:
        UserError: bad configuration, unreadable masks (after the others are written).
    """
    from vesselfm.analysis import AnalysisSettings, analyse_file
    from vesselfm.analysis.pipeline import require_extra
    from vesselfm.analysis.report import case_files, summary_row, write_case, write_summary
    from vesselfm.io import check_output_dir, ensure_writable_dir

    for key in ("mask", "output"):
        if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
            raise UserError(
                f"{key}= is required: python -m vesselfm.analyse mask=FILE|DIR output=DIR"
            )
    require_extra()
    raw = OmegaConf.to_container(cfg.get("analysis") or {}, resolve=True)
    try:
        settings = AnalysisSettings(**{k: float(v) for k, v in raw.items()})
    except TypeError as err:
        known = ", ".join(AnalysisSettings.__dataclass_fields__)
        raise UserError(f"analysis: unknown key ({err}); the keys are {known}") from err
    html = bool(cfg.get("html", True))
    masks = find_masks(str(cfg.mask))
    segments = _segments_for(cfg.get("segments"), masks)
    images = _images_for(cfg.get("image"), masks)
    names = [p.name for case in masks for p in case_files(cfg.output, case).values()]
    output = check_output_dir(
        cfg.output,
        files=names + ["summary.csv", "summary.md"],
        overwrite=bool(cfg.get("overwrite", False)),
    )
    ensure_writable_dir(output)
    results: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for case, path in masks.items():
        try:
            result = analyse_file(
                path,
                case,
                segments=segments[case],
                settings=settings,
                keep_mask=html or images[case] is not None,
            )
            if images[case] is not None:
                result["_image"] = _read_image(images[case], result["_mask"])
        except (UserError, ValueError, OSError) as err:
            errors[case] = str(err).splitlines()[0]
            log.error("case %s: %s", case, errors[case])
            continue
        paths[case] = write_case(result, output, plots=bool(cfg.get("plots", True)), html=html)
        result.pop("_mask", None)  # the cohort keeps the results, not the volumes
        result.pop("_image", None)
        results[case] = result
        log.info(
            "%s: CAD-RADS %s, %d branches, %d stenoses (automated, not a diagnosis)",
            case,
            result["cad_rads"],
            len(result["branches"]),
            len(result["stenoses"]),
        )
    summary = write_summary([summary_row(r) for r in results.values()], output) if results else {}
    if errors:
        first = next(iter(errors))
        raise UserError(
            f"{len(errors)} of {len(masks)} mask(s) could not be analysed (case {first}: "
            f"{errors[first]})"
        )
    return {"results": results, "paths": paths, "summary": summary}


@hydra_entrypoint("analyse")
def main(cfg: DictConfig) -> None:
    """CLI: analyse the masks and print the cohort table."""
    result = analyse(cfg)
    if result["summary"]:
        print(result["summary"]["md"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
