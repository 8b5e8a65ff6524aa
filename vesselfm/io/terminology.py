"""What the vessel segment is, in coded terms: the one table that Slicer's ``seg.nrrd`` (and,
later, DICOM-SEG) take their segment name, colour and codes from.

Codes are SNOMED CT (coding scheme designator ``SCT``), the scheme DICOM and 3D Slicer's
terminologies use. The mask vesselFM predicts is the lumen of the coronary arteries: category
*Tissue*, type *Coronary artery*.
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
