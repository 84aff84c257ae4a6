"""Standard terminology entries (DICOM / SNOMED CT codes) for the structures MedSeg makes.

Every code here appears in Slicer's terminology tables
(``SegmentationCategoryTypeModifier-DICOM-Master.json`` and ``...-SlicerGeneralAnatomy.json``),
so Slicer shows the entries as known terms.
"""

from __future__ import annotations

import copy
import re


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
    "spleen": {"category": _ANATOMY, "type": _code("78961009", "Spleen")},
    "right_kidney": {"category": _ANATOMY, "type": _code("64033007", "Kidney"), "type_modifier": _RIGHT},
    "left_kidney": {"category": _ANATOMY, "type": _code("64033007", "Kidney"), "type_modifier": _LEFT},
    "pancreas": {"category": _ANATOMY, "type": _code("15776009", "Pancreas")},
    "aorta": {"category": _ANATOMY, "type": _code("15825003", "Aorta")},
    "esophagus": {"category": _ANATOMY, "type": _code("32849002", "Esophagus")},
    "stomach": {"category": _ANATOMY, "type": _code("69695003", "Stomach")},
    "urinary_bladder": {"category": _ANATOMY, "type": _code("89837001", "Urinary bladder")},
    "prostate": {"category": _ANATOMY, "type": _code("41216001", "Prostate")},
    "trachea": {"category": _ANATOMY, "type": _code("44567001", "Trachea")},
    "spinal_cord": {"category": _ANATOMY, "type": _code("2748008", "Spinal cord")},
}

#: label names other tools give a structure (nnU-Net ``dataset.json`` labels, TotalSegmentator) -> the
#: ``TERMS`` key, matched after lower-casing and turning spaces and hyphens into underscores
LABEL_ALIASES: dict[str, str] = {
    **{k: k for k in TERMS},
    "lung_left": "left_lung", "lung_right": "right_lung", "kidney_left": "left_kidney",
    "kidney_right": "right_kidney", "bladder": "urinary_bladder", "oesophagus": "esophagus",
    "tumor": "neoplasm", "tumour": "neoplasm", "cancer": "neoplasm", "lesion": "neoplasm",
    "liver_tumor": "neoplasm", "kidney_tumor": "neoplasm", "pancreas_tumor": "neoplasm", "lung_nodules": "nodule",
    "oedema": "edema",
}


def term_key_for_label(name: str) -> str | None:
    """The ``TERMS`` key for a label name another tool gave (``"Lung Left"`` -> ``"left_lung"``), or None."""
    return LABEL_ALIASES.get(re.sub(r"[\s-]+", "_", name.strip().lower()))

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


#: AAPM TG-263 standard structure names (Mayo et al., "Standardizing Nomenclatures in Radiation
#: Oncology", AAPM Report 263, 2018) for the ``TERMS`` keys that have one; used as RTSTRUCT ROI names.
#: "External" is TG-263's name for the body outline. Keys without an entry ("bone": TG-263 names single
#: bones such as "Bone_Mandible", not all bones together; the lesion types) keep their display name.
TG263_NAMES: dict[str, str] = {
    "body": "External",
    "right_lung": "Lung_R",
    "left_lung": "Lung_L",
    "heart": "Heart",
    "liver": "Liver",
    "brain": "Brain",
    "spleen": "Spleen",
    "right_kidney": "Kidney_R",
    "left_kidney": "Kidney_L",
    "pancreas": "Pancreas",
    "aorta": "A_Aorta",
    "esophagus": "Esophagus",
    "stomach": "Stomach",
    "urinary_bladder": "Bladder",
    "prostate": "Prostate",
    "trachea": "Trachea",
    "spinal_cord": "SpinalCord",
}

#: TG-263 target type of a lesion written to RTSTRUCT: "GTV" followed by the lesion's number
#: ("GTV1", "GTV2", ...), TG-263's form for several targets of one type
TG263_LESION_PREFIX = "GTV"

#: DICOM RT ROI Interpreted Type (0x3006, 0x00A4) per ``TERMS`` key; any other organ is "ORGAN" and a
#: lesion "GTV"
RT_ROI_TYPES: dict[str, str] = {"body": "EXTERNAL"}
RT_ROI_TYPE_ORGAN = "ORGAN"
RT_ROI_TYPE_LESION = "GTV"


def _same_code(a: dict | None, b: dict | None) -> bool:
    if not a or not b:
        return not a and not b
    return (a.get("scheme"), a.get("code")) == (b.get("scheme"), b.get("code"))


def term_key(terminology: dict) -> str | None:
    """The ``TERMS`` key whose category, type and type modifier match ``terminology`` (by scheme and
    code; a region is ignored), or None."""
    if not terminology:
        return None
    for key, t in TERMS.items():
        if all(_same_code(t.get(part), terminology.get(part)) for part in ("category", "type", "type_modifier")):
            return key
    return None


def key_for_tg263_name(name: str) -> str | None:
    """The ``TERMS`` key whose TG-263 name is ``name`` (case-insensitive), or None."""
    for key, tg in TG263_NAMES.items():
        if tg.lower() == name.strip().lower():
            return key
    return None


#: names (case ignored) that mark a segment of a user's or another tool's segmentation as a lesion ("Lesion 3",
#: "Tumour", "GTV1", "GTV_2", "Nodule", "met")
LESION_NAME = re.compile(r"^(lesion|tumou?r|gtv|nodule|mass|metastasis|met)(\b|\d|_)", re.IGNORECASE)
#: words in a segment's terminology meanings that mark a lesion
LESION_TERMS = ("nodule", "mass", "neoplasm", "tumor", "tumour", "lesion", "edema", "necrosis")


def is_lesion_segment(name: str, terminology: dict | None = None) -> bool:
    """True when a segment named ``name`` with ``terminology`` (coded entries with a ``meaning``) is a
    lesion by :data:`LESION_NAME` or :data:`LESION_TERMS` (a segmentation MedSeg did not make)."""
    coded = " ".join(str(v.get("meaning", "")) for v in (terminology or {}).values() if isinstance(v, dict))
    return bool(LESION_NAME.match(name.strip())) or any(t in coded.lower() for t in LESION_TERMS)
