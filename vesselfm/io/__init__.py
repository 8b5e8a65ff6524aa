"""Case files: case ids, output names, label lookup, reading volumes, writing outputs, grid checks.

Everything that knows about file names and file formats lives here, so that a new format
(DICOM, Slicer's seg.nrrd) touches only this package:

- :mod:`~vesselfm.io.names`: the case-id rule per role (image, label, prediction, probability),
  refused ids, unique ids within a run.
- :mod:`~vesselfm.io.discovery`: the scans of ``input=``, the labels of ``label=``/``gt=`` and
  the label of a case.
- :mod:`~vesselfm.io.outputs`: output names and the checks that outputs may be written.
- :mod:`~vesselfm.io.volume`: :func:`read_volume` → :class:`Volume` (array, RAS affine, spacing,
  the header for writing), :func:`write_like` and :func:`write_volume`.
- :mod:`~vesselfm.io.nifti` (nibabel), :mod:`~vesselfm.io.itk` (SimpleITK: NRRD, MetaImage) and
  :mod:`~vesselfm.io.slicer` (pynrrd: 3D Slicer's ``.seg.nrrd``): the readers and writers of
  each format, by the table :data:`~vesselfm.io.volume.CODECS`.
- :mod:`~vesselfm.io.dicom` (pydicom: DICOM CT series) and :mod:`~vesselfm.io.dicom_seg`
  (highdicom: DICOM-SEG output over such a series, and its reader).
- :mod:`~vesselfm.io.terminology`: the segments' names, colours and SNOMED CT codes (the
  lumen's, and ImageCAS-X's 14 coronary segments).
- :mod:`~vesselfm.io.grid`: :func:`check_same_grid`.
- :mod:`~vesselfm.io.frames`: voxel orders and world frames (:func:`ras_voxel_order`).

nibabel is imported here only: by :mod:`~vesselfm.io.nifti` (files) and
:mod:`~vesselfm.io.frames` (orientation arithmetic); SimpleITK only by :mod:`~vesselfm.io.itk`.
"""

from __future__ import annotations

from vesselfm.io.discovery import (
    find_inputs,
    find_labels,
    is_output_name,
    label_files,
    list_volumes,
    match_label,
    pair_labels,
    static_root,
)
from vesselfm.io.frames import ras_voxel_order, spacing_from_affine
from vesselfm.io.grid import AFFINE_ATOL_MM, GridError, check_same_grid
from vesselfm.io.names import (
    EXTENSIONS,
    ROLES,
    case_id,
    case_id_problem,
    check_case_id,
    is_volume_file,
    renamed_cases,
    role_of,
    split_extension,
    unique_case_ids,
)
from vesselfm.io.outputs import (
    check_case_outputs,
    check_output_dir,
    ensure_writable_dir,
    find_outputs,
    output_name,
    output_paths,
)
from vesselfm.io.volume import (
    FORMATS,
    OUTPUT_FORMATS,
    Volume,
    VolumeError,
    check_output_format,
    check_output_formats,
    format_of,
    is_dicom_input,
    output_format_for,
    output_formats_for,
    read_volume,
    read_volume_bytes,
    write_like,
    write_volume,
)

__all__ = [
    "AFFINE_ATOL_MM",
    "EXTENSIONS",
    "FORMATS",
    "OUTPUT_FORMATS",
    "ROLES",
    "GridError",
    "Volume",
    "VolumeError",
    "case_id",
    "case_id_problem",
    "check_case_id",
    "check_case_outputs",
    "check_output_format",
    "check_output_formats",
    "check_output_dir",
    "check_same_grid",
    "ensure_writable_dir",
    "find_inputs",
    "find_labels",
    "find_outputs",
    "format_of",
    "is_dicom_input",
    "is_output_name",
    "is_volume_file",
    "label_files",
    "list_volumes",
    "match_label",
    "output_format_for",
    "output_formats_for",
    "output_name",
    "output_paths",
    "pair_labels",
    "ras_voxel_order",
    "read_volume",
    "read_volume_bytes",
    "renamed_cases",
    "role_of",
    "spacing_from_affine",
    "split_extension",
    "static_root",
    "unique_case_ids",
    "write_like",
    "write_volume",
]
