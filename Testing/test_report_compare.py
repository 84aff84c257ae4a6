"""compare.html: the comparison page and its figures, on spheres on a non-cubic oblique grid."""

import html
import re
from pathlib import Path

import numpy as np

from medseg.core.labelmap import LabelMap, Segment
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.followup.matching import match_lesions
from medseg.followup.response import lesion_changes, recist_response, volumetric_response
from medseg.measure.segments import measure_segments
from medseg.report.compare_page import (
    COMPARE_HTML,
    LOG_SCALE_RATIO,
    MAX_COMPARE_FIGURES,
    write_compare_html,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHAPE_KJI = (24, 56, 64)  # non-cubic
SPACING = (0.9, 1.1, 2.0)  # anisotropic
EVIL = "<script>alert(1)</script>"


def _oblique_grid() -> Volume:
    """An oblique (rotated 20 degrees about S, then 10 about R), flipped-i grid."""
    a, b = np.radians(20.0), np.radians(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    direction = rz @ rx @ np.diag([-1.0, 1.0, 1.0])
    return Volume.from_geometry(np.zeros(SHAPE_KJI, np.int16), SPACING, (20.0, -30.0, -25.0), direction, "grid")


GRID = _oblique_grid()
_K, _J, _I = np.indices(SHAPE_KJI)
RAS = GRID.ijk_to_ras_points(np.stack([_I.ravel(), _J.ravel(), _K.ravel()], 1).astype(float)).reshape(*SHAPE_KJI, 3)


def _at(i: float, j: float, k: float) -> np.ndarray:
    return GRID.ijk_to_ras_points(np.array([[i, j, k]], float))[0]


def _labelmap(spheres: list[tuple[str, str, np.ndarray, float]]) -> LabelMap:
    """spheres: (id, name, centre RAS, radius mm); label values 1, 2, ..."""
    arr = np.zeros(SHAPE_KJI, np.uint8)
    segs = []
    for n, (sid, name, centre, radius) in enumerate(spheres):
        arr[np.linalg.norm(RAS - centre, axis=-1) <= radius] = n + 1
        segs.append(Segment(sid, name, (0.9, 0.2, 0.2), n + 1))
    return LabelMap(GRID.with_array(arr, "labels"), tuple(segs))


def _image(lm: LabelMap) -> Volume:
    """A CT-like image: soft tissue with the lesions brighter."""
    return GRID.with_array(np.where(lm.array > 0, 60, -20).astype(np.int16) + np.int16(0), "image")


def _case(base_spheres, fu_spheres):
    """(compare.json-like report, baseline Result, follow-up label map and image on the baseline grid)."""
    base, fu = _labelmap(base_spheres), _labelmap(fu_spheres)
    b_les = {s.id: "lesion" for s in base.segments}
    f_les = {s.id: "lesion" for s in fu.segments}
    bm = measure_segments(base, b_les, all_diameters=False)
    fm = measure_segments(fu, f_les, all_diameters=False)
    matches = match_lesions(base, fu, list(b_les), list(f_les))
    report = {
        "medseg_version": "test",
        "task": "ct-chest-" + EVIL,
        "registration": {"mode": "affine", "quality": {"metric": -0.71, "foreground_dice": 0.97}},
        "lesions": lesion_changes(matches, bm, fm, 90.0),
        "recist": recist_response(matches, bm, fm),
        "volumetric": volumetric_response(matches, bm, fm),
        "warnings": ["registration warning " + EVIL],
    }
    baseline = Result(task="ct-chest", labelmap=base, lesions=b_les, measurements=bm, preview=_image(base))
    return report, baseline, fu, _image(fu)


def _pages_images(out: Path, page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def test_compare_page_grown_and_new_lesion(tmp_path: Path):
    c1 = _at(20, 24, 10)
    c2 = _at(46, 34, 14)
    report, baseline, fu, fu_img = _case(
        [("b1", "Lesion 1 " + EVIL, c1, 6.0)],
        [("f1", "Lesion 1 " + EVIL, c1, 9.0), ("f2", "Lesion 2", c2, 5.0)],
    )
    kinds = [r["kind"] for r in report["lesions"]]
    assert kinds == ["matched", "new"]
    written = write_compare_html(report, baseline, fu, fu_img, tmp_path,
                                 baseline_names={"b1": "Lesion 1 " + EVIL},
                                 followup_names={"f1": "Lesion 1 " + EVIL, "f2": "Lesion 2"})
    assert written[-1] == COMPARE_HTML
    page = (tmp_path / COMPARE_HTML).read_text(encoding="utf-8")

    # no raw user text: every <script> is escaped, the escaped form is there
    assert "<script>" not in page
    assert html.escape(EVIL) in page
    # responses with their rules: a new lesion -> PD for both
    assert report["recist"]["response"] == "PD" and report["volumetric"]["response"] == "PD"
    assert "RECIST 1.1" in page and "Volumetric" in page
    assert page.count('<span class="resp">PD</span>') == 2
    assert html.escape("new lesion(s) ['Lesion 2']") in page  # the rule, with names for ids
    # registration header
    assert "affine" in page and "foreground_dice" in page and "0.970" in page
    # one row per lesion with its volumes
    table = page.split("<h2>Lesions</h2>")[1].split("</table>")[0]
    assert table.count("<tr>") == 1 + len(report["lesions"])
    for row in report["lesions"]:
        assert f"{row['followup_volume_ml']:.3f}" in table
    assert f"{report['lesions'][0]['doubling_time_days']:.0f}" in table
    assert ">matched<" in table and ">new<" in table

    # one figure per lesion (the matched one, the new one) and the volume chart; all exist and are PNGs
    figs = [p for p in written if p.startswith("figures/compare_") and p != "figures/compare_volumes.png"]
    assert len(figs) == 2 and figs[0].startswith("figures/compare_01_Lesion_1")
    srcs = _pages_images(tmp_path, page)
    assert set(srcs) == set(figs) | {"figures/compare_volumes.png"}
    for rel in srcs:
        data = (tmp_path / rel).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000
    assert "Figures for" not in page  # no cap reached
    # the matched lesion's figure passes through its baseline centroid's slice (axial-closest plane: k)
    assert "k=10" in page


def test_figure_outlines_the_lesion_in_its_colour(tmp_path: Path):
    """The lesion's colour appears in both panels of a matched lesion's figure, left and right halves."""
    from PIL import Image

    c1 = _at(30, 28, 12)
    report, baseline, fu, fu_img = _case([("b1", "Lesion 1", c1, 7.0)], [("f1", "Lesion 1", c1, 10.0)])
    written = write_compare_html(report, baseline, fu, fu_img, tmp_path)
    fig = next(p for p in written if p.startswith("figures/compare_01"))
    rgb = np.asarray(Image.open(tmp_path / fig).convert("RGB")).astype(int)
    red = (rgb[..., 0] > 180) & (rgb[..., 1] < 90) & (rgb[..., 2] < 90)  # segment colour (0.9, 0.2, 0.2)
    half = rgb.shape[1] // 2
    left, right = int(red[:, :half].sum()), int(red[:, half:].sum())
    assert left > 50 and right > 50
    assert right > left  # the follow-up lesion is larger: a longer outline


def test_cap_message_with_twelve_lesions(tmp_path: Path):
    spheres = []
    n = 0
    for k in (5, 17):
        for j in (12, 28, 44):
            for i in (14, 46):
                n += 1
                spheres.append((f"s{n}", f"Lesion {n}", _at(i, j, k), 1.5 + 0.6 * n))
    assert len(spheres) == 12
    # the follow-up: same lesions, a little smaller; volumes span > LOG_SCALE_RATIO -> log axis
    fu = [(sid, name, c, 0.8 * r) for sid, name, c, r in spheres]
    report, baseline, fu_lm, fu_img = _case(spheres, fu)
    assert [r["kind"] for r in report["lesions"]] == ["matched"] * 12
    vols = [r["baseline_volume_ml"] for r in report["lesions"]]
    assert max(vols) > LOG_SCALE_RATIO * min(vols)
    written = write_compare_html(report, baseline, fu_lm, fu_img, tmp_path)
    page = (tmp_path / COMPARE_HTML).read_text(encoding="utf-8")
    figs = [p for p in written if re.match(r"figures/compare_\d\d_", p)]
    assert len(figs) == MAX_COMPARE_FIGURES == 10
    assert f"Figures for {MAX_COMPARE_FIGURES} of 12 lesions" in page
    table = page.split("<h2>Lesions</h2>")[1].split("</table>")[0]
    assert table.count("<tr>") == 13
    for n in range(1, 13):
        assert f">Lesion {n}<" in table
    assert "logarithmic axis" in page
    for rel in _pages_images(tmp_path, page):
        assert (tmp_path / rel).read_bytes()[:8] == PNG_MAGIC


def test_gone_lesion_figure_without_followup_image(tmp_path: Path):
    """A gone lesion still gets a figure (its empty place at follow-up); no follow-up image: black panel."""
    c1, c2 = _at(20, 24, 10), _at(46, 34, 14)
    report, baseline, fu, _ = _case([("b1", "Lesion 1", c1, 6.0), ("b2", "Lesion 2", c2, 6.0)],
                                    [("f1", "Lesion 1", c1, 4.0)])
    assert [r["kind"] for r in report["lesions"]] == ["matched", "gone"]
    written = write_compare_html(report, baseline, fu, None, tmp_path)
    figs = [p for p in written if re.match(r"figures/compare_\d\d_", p)]
    assert figs == ["figures/compare_01_Lesion_1.png", "figures/compare_02_Lesion_2.png"]
    page = (tmp_path / COMPARE_HTML).read_text(encoding="utf-8")
    assert "Lesion 2 (gone)" in page and "linear axis" in page
    assert page.count('<span class="resp">') == 2
