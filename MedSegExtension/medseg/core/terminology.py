"""Standard terminology entries (DICOM / SNOMED CT codes) for the structures MedSeg makes.

Every code here appears in Slicer's terminology tables
(``SegmentationCategoryTypeModifier-DICOM-Master.json`` and ``...-SlicerGeneralAnatomy.json``),
so Slicer shows the entries as known terms.
"""

from __future__ import annotations

import copy


def _code(value: str, meaning: str, scheme: str = "SCT") -> dict:
    return {"scheme": scheme, "code": value, "meaning": meaning}


_TISSUE = _code("85756007", "Tissue")
_ANATOMY = _code("123037004", "Anatomical Structure")
_ALTERED = _code("49755003", "Morphologically Altered Structure")
_RIGHT = _code("24028007", "Right")
_LEFT = _code("7771000", "Left")

#: key -> terminology entry (category, type, optional type_modifier, optional region)
TERMS: dict[str, dict] = {
    "body": {"category": _ANATOMY, "type": _code("38266002", "Entire body")},
    "right_lung": {"category": _ANATOMY, "type": _code("39607008", "Lung"), "type_modifier": _RIGHT},
    "left_lung": {"category": _ANATOMY, "type": _code("39607008", "Lung"), "type_modifier": _LEFT},
    "bone": {"category": _TISSUE, "type": _code("272673000", "Bone")},
    "heart": {"category": _ANATOMY, "type": _code("80891009", "Heart")},
    "liver": {"category": _ANATOMY, "type": _code("10200004", "Liver")},
    "brain": {"category": _ANATOMY, "type": _code("12738006", "Brain")},
    "nodule": {"category": _ALTERED, "type": _code("27925004", "Nodule")},
    "mass": {"category": _ALTERED, "type": _code("4147007", "Mass")},
    "neoplasm": {"category": _ALTERED, "type": _code("108369006", "Neoplasm")},
    "edema": {"category": _ALTERED, "type": _code("79654002", "Edema")},
    "necrosis": {"category": _ALTERED, "type": _code("6574001", "Necrosis")},
}

#: anatomic region codes used with lesions
REGIONS: dict[str, dict] = {
    "lung": _code("39607008", "Lung"),
    "liver": _code("10200004", "Liver"),
    "brain": _code("12738006", "Brain"),
}


def term(key: str, region: str | None = None) -> dict:
    """A fresh copy of the terminology entry ``key``, optionally with an anatomic region."""
    if key not in TERMS:
        raise KeyError(f"unknown terminology key {key!r}; known: {sorted(TERMS)}")
    t = copy.deepcopy(TERMS[key])
    if region is not None:
        if region not in REGIONS:
            raise KeyError(f"unknown region {region!r}; known: {sorted(REGIONS)}")
        t["region"] = copy.deepcopy(REGIONS[region])
    return t
