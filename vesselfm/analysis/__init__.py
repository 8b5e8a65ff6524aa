"""Coronary analysis of a vessel mask: centreline tree, branch names, lumen size, stenoses, CAD-RADS.

``python -m vesselfm.analyse mask=<file|folder> [segments=<label map>] output=<dir>`` runs it on
files; from Python:

>>> from vesselfm.analysis import analyse_mask  # doctest: +SKIP
>>> result = analyse_mask(mask, affine, case="1")  # doctest: +SKIP
>>> result["cad_rads"], [s["degree_percent"] for s in result["stenoses"]]  # doctest: +SKIP

Modules: :mod:`~vesselfm.analysis.centreline` (skeleton → tree), :mod:`~vesselfm.analysis.lumen`
(inscribed radius, area-equivalent diameter), :mod:`~vesselfm.analysis.naming`,
:mod:`~vesselfm.analysis.stenosis` (lesions, grades, CAD-RADS), :mod:`~vesselfm.analysis.pipeline`
(all of it on one mask) and :mod:`~vesselfm.analysis.report` (the files). Results are automated,
not a diagnosis.
"""

from __future__ import annotations

from vesselfm.analysis.pipeline import NOTICE, AnalysisSettings, analyse_file, analyse_mask
from vesselfm.analysis.stenosis import CAD_RADS, GRADES, cad_rads, grade

__all__ = [
    "CAD_RADS",
    "GRADES",
    "NOTICE",
    "AnalysisSettings",
    "analyse_file",
    "analyse_mask",
    "cad_rads",
    "grade",
]
