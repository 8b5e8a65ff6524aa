"""What the segments are, in coded terms: the one table that Slicer's ``seg.nrrd`` and DICOM-SEG
take their segment names, colours and codes from.

Codes are SNOMED CT (coding scheme designator ``SCT``), the scheme DICOM and 3D Slicer's
terminologies use. The mask a lumen model predicts is the lumen of the coronary arteries
(:data:`VESSEL`: category *Tissue*, type *Coronary artery*); a segment model's label map holds
ImageCAS-X's 14 codes (:data:`SEGMENTS`), each a :data:`CORONARY_SEGMENTS` entry with its own
colour and its artery's code from DICOM CID 3015 (:data:`SEGMENT_TYPES`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Code:
    """A coded concept: ``(scheme, value, meaning)``, e.g. ``SCT 41801008 "Coronary artery"``."""

    scheme: str
    value: str
    meaning: str

    def slicer(self) -> str:
        """Slicer's ``scheme^value^meaning`` form."""
        return f"{self.scheme}^{self.value}^{self.meaning}"


@dataclass(frozen=True)
class Segment:
    """One segment of a segmentation file: its label value, name, colour (RGB in [0, 1]) and
    its category and type codes."""

    label: int
    name: str
    color: tuple[float, float, float]
    category: Code
    type: Code


#: the segment of our ``<case>_pred`` masks (label value 1); colour: Slicer's for arteries
VESSEL = Segment(
    label=1,
    name="coronary artery lumen",
    color=(216 / 255, 101 / 255, 79 / 255),
    category=Code("SCT", "85756007", "Tissue"),
    type=Code("SCT", "41801008", "Coronary artery"),
)

#: the terminology context (Slicer's name of the list the category and type come from)
SLICER_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMY_CONTEXT = "Anatomic codes - DICOM master list"


def slicer_terminology(segment: Segment) -> str:
    """Slicer's ``TerminologyEntry:`` string of ``segment`` (for ``Segment<N>_Tags``):
    ``context~category~type~type modifier~anatomic context~region~region modifier``."""
    parts = [
        SLICER_CONTEXT,
        segment.category.slicer(),
        segment.type.slicer(),
        "^^",
        SLICER_ANATOMY_CONTEXT,
        "^^",
        "^^",
    ]
    return "TerminologyEntry:" + "~".join(parts) + "|"


#: ImageCAS-X coronary segment codes -> names (its README; 0 is background; ``Other``: D3, D4,
#: OM3, OM4 and smaller side branches): the one table data, metrics and analysis use
SEGMENTS: dict[int, str] = {
    1: "LM",
    2: "LAD",
    3: "LCx",
    4: "D1",
    5: "D2",
    6: "OM1",
    7: "OM2",
    8: "IM",
    9: "RCA",
    10: "R-PDA",
    11: "R-PLA",
    12: "L-PDA",
    13: "L-PLA",
    14: "Other",
}

#: distinct colours (RGB 0..255) of the 14 ImageCAS-X codes: left tree warm, right tree cool
SEGMENT_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (230, 25, 75),  # LM
    2: (245, 130, 48),  # LAD
    3: (255, 225, 25),  # LCx
    4: (250, 190, 212),  # D1
    5: (170, 110, 40),  # D2
    6: (128, 0, 0),  # OM1
    7: (210, 245, 60),  # OM2
    8: (240, 50, 230),  # IM
    9: (0, 130, 200),  # RCA
    10: (70, 240, 240),  # R-PDA
    11: (0, 0, 128),  # R-PLA
    12: (60, 180, 75),  # L-PDA
    13: (0, 128, 128),  # L-PLA
    14: (128, 128, 128),  # Other
}

#: each ImageCAS-X code's artery as SNOMED CT codes from DICOM PS3.16 CID 3015 "Coronary
#: Arteries" (as pydicom ships the context group: ``pydicom.sr.codedict.codes.cid3015``; a test
#: checks this table against it). ``Other`` (D3, D4, OM3, OM4 and smaller branches) has no single
#: concept there and keeps the generic 41801008 *Coronary artery* of :data:`VESSEL`.
SEGMENT_TYPES: dict[int, Code] = {
    1: Code("SCT", "3227004", "Left Main Coronary Artery"),
    2: Code("SCT", "59438005", "Left Anterior Descending Coronary Artery"),
    3: Code("SCT", "57396003", "Circumflex Coronary Artery"),
    4: Code("SCT", "91750005", "1st Diagonal Coronary Artery"),
    5: Code("SCT", "91751009", "2nd Diagonal Coronary Artery"),
    6: Code("SCT", "91754001", "1st Marginal Coronary Artery"),
    7: Code("SCT", "91755000", "2nd Marginal Coronary Artery"),
    8: Code("SCT", "244252004", "Intermediate Artery (Ramus)"),
    9: Code("SCT", "13647002", "Right Coronary Artery"),
    10: Code("SCT", "53655008", "Posterior Descending Right Coronary Artery"),
    11: Code("SCT", "17269004", "Posterolateral branch of right Coronary Artery"),
    12: Code("SCT", "91760001", "Left Posterior Descending Circumflex Coronary Artery"),
    13: Code("SCT", "57823005", "Left Posterolateral Circumflex Coronary Artery"),
    14: VESSEL.type,
}

#: the 14 ImageCAS-X segments of a segment model's label map: label value = code, ImageCAS-X's
#: name, a colour of its own, category *Tissue* (as :data:`VESSEL`) and the artery's type code
CORONARY_SEGMENTS: tuple[Segment, ...] = tuple(
    Segment(
        label=code,
        name=name,
        color=(
            SEGMENT_COLOURS[code][0] / 255,
            SEGMENT_COLOURS[code][1] / 255,
            SEGMENT_COLOURS[code][2] / 255,
        ),
        category=VESSEL.category,
        type=SEGMENT_TYPES[code],
    )
    for code, name in sorted(SEGMENTS.items())
)


def segments_present(
    labels: object, table: tuple[Segment, ...] = CORONARY_SEGMENTS
) -> list[Segment]:
    """The segments of ``table`` whose label value occurs in the label map ``labels``.

    Raises:
        ValueError: a non-zero value no segment of ``table`` has.
    """
    import numpy as np

    values = set(np.unique(np.asarray(labels)).tolist()) - {0}
    known = {s.label for s in table}
    if values - known:
        raise ValueError(
            f"label values {sorted(values - known)} have no segment (known: 1..{max(known)})"
        )
    return [s for s in table if s.label in values]
