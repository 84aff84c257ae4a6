"""The report's pictures on the chest phantom: distinct colours, the body outlined, crosshair ticks
that leave lesions free, readable labels on thin inputs, the 3D view's translucency and orientation
letters, and every lesion accounted for on report.html."""

from __future__ import annotations

import io
import itertools
import re

import numpy as np
import pytest
from scipy import ndimage

from medseg.core.box import Box
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.data.phantom import make_chest_phantom
from medseg.measure.segments import measure_segments
from medseg.report import figures, style, view3d
from medseg.report.html_page import write_report_html
from medseg.report.json_report import build_report
from medseg.report.planes import arrange, label_slice_hv, plane_layouts, slice_hv
from medseg.segment.ct_chest import COLORS, LESION_COLORS
from medseg.surface.meshing import labelmap_to_meshes

ORGANS = ("body", "right_lung", "left_lung", "bone")


# --------------------------------------------------------------------------- phantom results
def phantom_result(
    lesions: bool = True,
    shape=(48, 80, 96),
    spacing=(3.0, 3.0, 5.0),
    colours: dict | None = None,
    meshes: bool = False,
) -> Result:
    """A ct-chest-like result on the phantom's truth: Body (everything inside the body outline but
    lungs and bone), Right lung, Left lung, Bones and one segment + box per lung lesion, in the
    preset's colours (or ``colours`` by organ key)."""
    vol, truth = make_chest_phantom(shape, spacing, seed=0, lung_lesions=lesions, noise_hu=0.0)
    cols = {**COLORS, **(colours or {})}
    labels = np.zeros(vol.shape_kji, np.uint8)
    labels[truth.labels > 0] = 1
    labels[truth.mask("Right lung", "Right pulmonary vessels")] = 2
    labels[truth.mask("Left lung", "Left pulmonary vessels")] = 3
    labels[truth.mask("bone")] = 4
    segs = [Segment(key, name, cols[key], n + 1)
            for n, (key, name) in enumerate(zip(ORGANS, ("Body", "Right lung", "Left lung", "Bones"), strict=True))]
    boxes, kinds = [], {}
    for n, les in enumerate(truth.lung_lesions):
        value = 5 + n
        labels[truth.mask(les.name)] = value
        sid = f"lesion_{n + 1}"
        segs.append(Segment(sid, f"Lesion {n + 1}", LESION_COLORS[n % len(LESION_COLORS)], value))
        boxes.append(Box(np.array(les.centre_ras), np.array(les.size_mm) + 2.0, np.eye(3), les.kind, 0.9, sid,
                         f"Lesion {n + 1}"))
        kinds[sid] = les.kind
    lm = LabelMap(vol.with_array(labels, "labels"), tuple(segs))
    mesh = labelmap_to_meshes(lm, smoothing=0.3) if meshes else {}
    # measured as the pipeline does, so the report knows the lesions
    return Result("ct-chest", lm, boxes=boxes, meshes=mesh, lesions=kinds, preview=vol,
                  measurements=measure_segments(lm, kinds, all_diameters=False),
                  inputs=[{"name": "phantom", "modality": "CT"}])


@pytest.fixture(scope="module")
def chest() -> Result:
    return phantom_result()


@pytest.fixture(scope="module")
def chest_report(chest) -> dict:
    return build_report(chest)


def _rgb(fig) -> np.ndarray:
    """The drawn figure as an RGB float array, rows from the top."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(float) / 255


def _pixels_of(ax, xy: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Figure pixel (row, col) of plot points ``xy`` (mm) in ``ax``."""
    disp = ax.transData.transform(xy)
    return (height - disp[:, 1]).astype(int), disp[:, 0].astype(int)


def _panel_labels(result: Result, target_ras, lay_index: int) -> tuple[np.ndarray, float, float]:
    vol = result.preview
    lay = plane_layouts(vol)[lay_index]
    idx = int(np.clip(np.rint(vol.ras_to_ijk_points(target_ras)[0][lay.axis]), 0, vol.shape_ijk[lay.axis] - 1))
    lab = arrange(label_slice_hv(result.labelmap.volume, vol, lay, idx), lay)
    return lab, vol.spacing[lay.h_axis], vol.spacing[lay.v_axis]


# --------------------------------------------------------------------------- 1. colours
def test_display_colours_tell_the_chest_preset_apart():
    """The preset's colours are distinct (CIE76 >= MIN_DELTA_E) and drawn unchanged. Segments given
    nearly one colour (the preset's Body and lung colours before 0.3.0, CIE76 < 20) are drawn
    at least MIN_DELTA_E apart, keeping the colours that are already distinct."""
    preset = [COLORS[k] for k in ORGANS] + list(LESION_COLORS)
    assert style.min_pairwise_delta_e(preset) >= style.MIN_DELTA_E
    segs = [Segment(k, k, COLORS[k], n + 1) for n, k in enumerate(ORGANS)]
    segs += [Segment(f"l{n}", f"L{n}", c, 10 + n) for n, c in enumerate(LESION_COLORS)]
    shown = style.display_colours(segs, [f"l{n}" for n in range(len(LESION_COLORS))])
    assert all(shown[s.id] == pytest.approx(s.color) for s in segs)
    old = {**COLORS, "right_lung": (197 / 255, 165 / 255, 145 / 255), "left_lung": (172 / 255, 138 / 255, 115 / 255)}
    segs = [Segment(k, k, old[k], n + 1) for n, k in enumerate(ORGANS)]
    segs += [Segment(f"l{n}", f"L{n}", c, 10 + n) for n, c in enumerate(LESION_COLORS)]
    assert style.min_pairwise_delta_e([old[k] for k in ORGANS]) < style.MIN_DELTA_E  # the problem
    shown = style.display_colours(segs, [f"l{n}" for n in range(len(LESION_COLORS))])
    assert style.min_pairwise_delta_e(list(shown.values())) >= style.MIN_DELTA_E
    assert shown["body"] == pytest.approx(COLORS["body"]) and shown["bone"] == pytest.approx(COLORS["bone"])
    for n, c in enumerate(LESION_COLORS):
        assert shown[f"l{n}"] == pytest.approx(c)
    # many lesions: colours repeat among lesions, never an organ's
    many = segs[:4] + [Segment(f"m{n}", f"M{n}", LESION_COLORS[0], 20 + n) for n in range(40)]
    shown = style.display_colours(many, [f"m{n}" for n in range(40)])
    organ_c = [shown[k] for k in ORGANS]
    assert all(style.delta_e(shown[f"m{n}"], np.array(organ_c)).min() >= style.MIN_DELTA_E for n in range(40))
    distinct = sorted({shown[f"m{n}"] for n in range(40)})
    assert len(distinct) >= 10 and style.min_pairwise_delta_e(distinct) >= style.MIN_DELTA_E


def test_slice_figure_legend_colours_are_distinct(chest, chest_report):
    """The legend of the first lesion's figure, as rendered: each entry's swatch pixels differ from
    the others' by at least MIN_DELTA_E."""
    target = figures.slice_targets(chest, chest_report)[1]
    fig = figures.draw_slice_figure(chest, chest.preview, target, (-1000.0, 400.0))
    rgb = _rgb(fig)
    (leg,) = fig.legends
    renderer = fig.canvas.get_renderer()
    names = [t.get_text() for t in leg.get_texts()]
    assert {"Body", "Right lung", "Left lung", "Bones", "Lesion 1"} <= set(names)
    swatch = []
    for patch in leg.get_patches():
        bb = patch.get_window_extent(renderer)
        rows = slice(int(rgb.shape[0] - bb.y1) + 1, int(rgb.shape[0] - bb.y0) - 1)
        cols = slice(int(bb.x0) + 1, int(bb.x1) - 1)
        px = rgb[rows, cols].reshape(-1, 3)
        # the most saturated/brightest pixels of the swatch (an outline-only swatch has a black middle)
        px = px[np.argsort(-px.sum(axis=1))[: max(4, len(px) // 4)]]
        swatch.append(px.mean(axis=0))
    assert len(swatch) == len(names)
    for (na, a), (nb, b) in itertools.combinations(zip(names, swatch, strict=True), 2):
        assert float(style.delta_e(a, b)) >= style.MIN_DELTA_E * 0.8, (na, nb, a, b)


# --------------------------------------------------------------------------- 2. roles
def test_body_is_outlined_organs_filled(chest, chest_report):
    roles = style.segment_roles(chest.labelmap, figures.lesion_ids_of(chest_report))
    assert roles["body"] == style.Role.SHELL
    assert roles["right_lung"] == roles["left_lung"] == roles["bone"] == style.Role.ORGAN
    assert roles["lesion_1"] == style.Role.LESION
    # an organ holding only a lesion stays an organ
    arr = np.zeros((20, 20, 20), np.uint8)
    arr[4:16, 4:16, 4:16] = 1
    arr[8:11, 8:11, 8:11] = 2
    lm = LabelMap(Volume.from_geometry(arr), (Segment("o", "O", (0, 1, 0), 1), Segment("l", "L", (1, 0, 0), 2)))
    assert style.segment_roles(lm, {"l"}) == {"o": style.Role.ORGAN, "l": style.Role.LESION}

    target = figures.slice_targets(chest, chest_report)[0]
    fig = figures.draw_slice_figure(chest, chest.preview, target, (-1000.0, 400.0))
    rgb = _rgb(fig)
    lab, sh, sv = _panel_labels(chest, target.ras, 0)  # axial
    ax = fig.axes[0]

    vol = chest.preview
    lay = plane_layouts(vol)[0]
    idx = int(np.rint(vol.ras_to_ijk_points(target.ras)[0][lay.axis]))
    grey = np.clip((arrange(slice_hv(vol, lay, idx), lay).astype(float) + 1000.0) / 1400.0, 0, 1)

    def sample(value):
        """Figure RGB and the CT grey level at 60 pixels well inside segment ``value``."""
        inner = ndimage.binary_erosion(lab == value, iterations=2)
        rows, cols = np.nonzero(inner)
        pick = np.linspace(0, rows.size - 1, 60).astype(int)
        r, c = _pixels_of(ax, np.stack([cols[pick] * sh, rows[pick] * sv], axis=1), rgb.shape[0])
        return rgb[r, c], grey[rows[pick], cols[pick]]

    body, g = sample(1)  # soft tissue: the CT grey, not tinted by the body colour
    assert np.abs(body - g[:, None]).max() < 0.03
    lung, g = sample(2)  # the right lung's colour over the CT grey
    c = np.array(style.display_colours(chest.labelmap.segments, chest.lesions)["right_lung"])
    alpha = figures.FILL_ALPHA[style.Role.ORGAN]
    assert np.abs(lung - ((1 - alpha) * g[:, None] + alpha * c)).max() < 0.03


# --------------------------------------------------------------------------- 3. crosshair
def test_crosshair_ticks_keep_off_the_lesion():
    gap = figures.crosshair_gap_mm(np.pad(np.ones((3, 3), int), 5), 1, np.array([6.0, 6.0]), 1.0, 1.0)
    assert gap >= np.hypot(1.5, 1.5) + figures.CROSSHAIR_MARGIN_MM - 1e-9
    for (x0, y0), (x1, y1) in figures.crosshair_segments(np.array([6.0, 6.0]), gap, 5.0):
        assert min(np.hypot(x0 - 6, y0 - 6), np.hypot(x1 - 6, y1 - 6)) == pytest.approx(gap)
    # another lesion on the right tick's way (pixels 24..26 of row 10, 1 mm pixels): the tick stops
    # short of it; one right on the upper tick's inner end: that tick goes
    avoid = np.zeros((40, 40), bool)
    avoid[10, 24:27] = True
    avoid[15:17, 9:12] = True
    ticks = figures.crosshair_segments(np.array([10.0, 10.0]), 5.0, 20.0)
    left, right, below = figures.clip_ticks(ticks, avoid, 1.0, 1.0)
    assert left == ticks[0] and below == ticks[2]
    assert right[0] == ticks[1][0] and 21.5 < right[1][0] <= 23.5 - figures.CROSSHAIR_MARGIN_MM / 2


def test_crosshair_leaves_a_small_lesion_visible():
    """The 6 mm nodule's figure: no crosshair-cyan pixel inside the nodule in any panel, while the
    ticks are drawn around it."""
    res = phantom_result(shape=(96, 160, 192), spacing=(1.5, 1.5, 2.5))
    rep = build_report(res)
    sizes = {s["id"]: s["voxel_count"] for s in rep["segments"] if s["is_lesion"]}
    sid = min(sizes, key=sizes.get)
    target = next(t for t in figures.slice_targets(res, rep) if t.segment_id == sid)
    fig = figures.draw_slice_figure(res, res.preview, target, (-1000.0, 400.0))
    rgb = _rgb(fig)
    cyan = (rgb[..., 0] < 0.3) & (rgb[..., 1] > 0.8) & (rgb[..., 2] > 0.8)
    value = next(s.label_value for s in res.labelmap.segments if s.id == sid)
    for n, ax in enumerate(fig.axes[:3]):
        lab, sh, sv = _panel_labels(res, target.ras, n)
        rows, cols = np.nonzero(lab == value)
        assert rows.size, "the nodule is in every plane through its centre"
        r, c = _pixels_of(ax, np.stack([cols * sh, rows * sv], axis=1), rgb.shape[0])
        assert not cyan[r, c].any()
        bb = ax.get_window_extent()
        assert cyan[int(rgb.shape[0] - bb.y1):int(rgb.shape[0] - bb.y0), int(bb.x0):int(bb.x1)].sum() > 20


# --------------------------------------------------------------------------- 6. thin inputs
def _thin_result() -> tuple[Result, dict]:
    """A 3-slice CT (5 mm slices) with three small lesions close together, each with a box."""
    ct = np.full((3, 60, 80), -1000, np.int16)
    ct[:, 10:50, 10:70] = 40
    grid = Volume.from_geometry(ct, (1.0, 1.0, 5.0), (0.0, 0.0, 0.0), name="thin CT")
    vol = Volume(ct, grid.ijk_to_ras, "thin CT", {"modality": "CT"})
    lab = np.zeros(ct.shape, np.uint8)
    lab[:, 10:50, 10:70] = 1
    segs = [Segment("body", "Body", (0.7, 0.5, 0.4), 1)]
    boxes = []
    for n, (j, i) in enumerate([(28, 36), (28, 42), (33, 38)]):
        lab[1, j:j + 3, i:i + 3] = 2 + n
        segs.append(Segment(f"les{n}", f"Lesion number {n + 1}", LESION_COLORS[n], 2 + n))
        centre = vol.ijk_to_ras_points(np.array([[i + 1, j + 1, 1.0]]))[0]
        boxes.append(Box(centre, (4.0, 4.0, 6.0), np.eye(3), "nodule", 0.8, f"les{n}", f"Lesion number {n + 1}"))
    lm = LabelMap(vol.with_array(lab), tuple(segs))
    kinds = {f"les{n}": "nodule" for n in range(3)}
    res = Result("t", lm, boxes=boxes, preview=vol, lesions=kinds,
                 measurements=measure_segments(lm, kinds, all_diameters=False))
    return res, build_report(res)


def test_thin_input_labels_do_not_overlap():
    res, rep = _thin_result()
    for target in figures.slice_targets(res, rep)[:2]:
        fig = figures.draw_slice_figure(res, res.preview, target, (-1000.0, 400.0))
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = figures.all_texts(fig)
        boxes = [t.get_window_extent(renderer) for t in texts]
        for (ta, a), (tb, b) in itertools.combinations(zip(texts, boxes, strict=True), 2):
            assert not a.overlaps(b), (ta.get_text(), tb.get_text())
        width, height = fig.canvas.get_width_height()
        for t, b in zip(texts, boxes, strict=True):
            assert b.x0 >= 0 and b.y0 >= 0 and b.x1 <= width and b.y1 <= height, t.get_text()
        shown = [t.get_text().strip() for t in texts]
        assert shown.count("S") == 2 and shown.count("I") == 2  # coronal and sagittal edge letters
        assert any(s.startswith("Lesion number") and t.axes is not None for s, t in zip(shown, texts, strict=True))


# --------------------------------------------------------------------------- 4./5. 3D view
VIVID = {"body": (0.95, 0.85, 0.75), "right_lung": (0.1, 0.3, 1.0), "left_lung": (0.1, 0.3, 1.0),
         "bone": (0.95, 0.95, 0.95)}


@pytest.fixture(scope="module")
def chest_no_lesions() -> Result:
    return phantom_result(lesions=False, colours=VIVID, meshes=True)


def _png_rgb(data: bytes) -> np.ndarray:
    import matplotlib.image

    assert data.startswith(b"\x89PNG")
    return matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]


@pytest.mark.parametrize("method", ["vtk", "matplotlib"])
def test_3d_view_without_lesions_shows_the_lungs_inside_the_body(chest_no_lesions, method):
    res = chest_no_lesions
    roles = style.segment_roles(res.labelmap)
    shells = frozenset(k for k, r in roles.items() if r == style.Role.SHELL)
    assert shells == {"body"} and not res.lesions
    opacity = view3d.mesh_opacities(view3d._mesh_items(res), frozenset(), shells)
    assert opacity["body"] < 0.5 and opacity["right_lung"] == opacity["left_lung"] == 1.0
    draw = view3d.render_3d_vtk if method == "vtk" else view3d.render_3d_matplotlib
    rgb = _png_rgb(draw(res, (240, 240), frozenset(), None, shells))
    blue = (rgb[..., 2] > rgb[..., 0] + 0.15) & (rgb[..., 2] > rgb[..., 1] + 0.05)
    assert blue.sum() > 0.02 * blue.size  # the lungs show through the body


def test_3d_opacities():
    res = _three_spheres()
    items = view3d._mesh_items(res)
    assert view3d.mesh_opacities(items) == {"r": 1.0, "l": 1.0, "s": 1.0}  # side by side: opaque
    assert view3d.mesh_opacities(items, frozenset({"s"})) == {"r": view3d.TRANSLUCENT_OPACITY,
                                                              "l": view3d.TRANSLUCENT_OPACITY, "s": 1.0}
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    big = vtkSphereSource()
    big.SetCenter(40.0, 0.0, 0.0)
    big.SetRadius(30.0)
    big.Update()
    res.meshes["big"] = big.GetOutput()  # holds "r"
    op = view3d.mesh_opacities(view3d._mesh_items(res))
    assert op["big"] == view3d.ORGAN_OPACITY and op["r"] == op["l"] == 1.0
    assert view3d.mesh_opacities(view3d._mesh_items(res), shell_ids=frozenset({"big"}))["big"] == view3d.SHELL_OPACITY


def test_3d_edge_letters_follow_the_camera():
    assert view3d.view_edge_labels() == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert view3d.view_edge_labels((0, 1, 0), (0, 0, 1)) == {"left": "L", "right": "R", "top": "S", "bottom": "I"}
    assert view3d.view_edge_labels((0, 0, -1), (0, 1, 0)) == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    # from the patient's right, looking left: anterior on the right
    assert view3d.view_edge_labels((-1, 0, 0), (0, 0, 1)) == {"left": "P", "right": "A", "top": "S", "bottom": "I"}
    pos = view3d.letter_positions((200, 100))
    assert pos["left"][0] < pos["top"][0] < pos["right"][0] and pos["bottom"][1] < pos["left"][1] < pos["top"][1]
    with pytest.raises(Exception, match="parallel"):
        view3d.view_edge_labels((0, 0, 1), (0, 0, 2))


def _three_spheres() -> Result:
    from vtkmodules.vtkFiltersSources import vtkSphereSource

    def sphere(c):
        s = vtkSphereSource()
        s.SetCenter(*c)
        s.SetRadius(10.0)
        s.Update()
        return s.GetOutput()

    vol = Volume.from_geometry(np.zeros((4, 4, 4), np.uint8))
    segs = (Segment("r", "right", (1, 0, 0), 1), Segment("l", "left", (0, 0, 1), 2), Segment("s", "sup", (0, 1, 0), 3))
    return Result("t", LabelMap(vol, segs),
                  meshes={"r": sphere((40, 0, 0)), "l": sphere((-40, 0, 0)), "s": sphere((0, 0, 40))})


@pytest.mark.parametrize("method", ["vtk", "matplotlib"])
def test_3d_view_draws_the_letters_where_computed(method):
    """Letters on, minus letters off: dark text pixels near each computed letter position (image
    y up), and the 'R' on the side where the patient's right sphere is drawn."""
    res = _three_spheres()
    size = (240, 240)
    draw = view3d.render_3d_vtk if method == "vtk" else view3d.render_3d_matplotlib
    on = _png_rgb(draw(res, size, letters=True))
    off = _png_rgb(draw(res, size, letters=False))
    diff = np.abs(on - off).sum(axis=-1) > 0.3
    assert diff.any()
    rows, cols = np.nonzero(diff)
    near = np.zeros(rows.size, bool)
    for x, y in view3d.letter_positions(size).values():
        box = (np.abs(cols - x) < 16) & (np.abs((size[1] - rows) - y) < 16)
        assert box.sum() > 10  # a letter drawn there
        near |= box
    assert near.all()  # nothing else changed
    red = (off[..., 0] > 0.3) & (off[..., 1] < 0.2) & (off[..., 2] < 0.2)
    letters = view3d.view_edge_labels()
    left_is_right = np.nonzero(red)[1].mean() < size[0] / 2
    assert (letters["left"] == "R") == left_is_right


# --------------------------------------------------------------------------- 7. many lesions
def test_report_html_accounts_for_every_lesion(tmp_path):
    """More lesions than MAX_LESION_FIGURES: figures for the first ones, the page says how many of
    how many, and every lesion is in the measurements table."""
    n_les = figures.MAX_LESION_FIGURES + 4
    arr = np.zeros((6, 40, 40), np.uint8)
    segs = [Segment("organ", "Organ", (0.2, 0.8, 0.2), 1)]
    arr[1:5, 2:38, 2:38] = 1
    kinds = {}
    for n in range(n_les):
        j, i = 4 + 6 * (n // 5), 4 + 6 * (n % 5)
        arr[2:4, j:j + 2, i:i + 2] = 2 + n
        segs.append(Segment(f"les{n}", f"Lesion {n + 1}", LESION_COLORS[n % 8], 2 + n))
        kinds[f"les{n}"] = "nodule"
    lm = LabelMap(Volume.from_geometry(arr, (2.0, 2.0, 3.0)), tuple(segs))
    res = Result("t", lm, lesions=kinds, measurements=measure_segments(lm, kinds, all_diameters=False))
    rep = build_report(res)
    assert len(figures.slice_targets(res, rep)) == 1 + n_les
    written = write_report_html(res, rep, tmp_path, renderer_3d="none")
    lesion_pngs = [w for w in written if w.startswith("figures/slices_lesion_")]
    assert len(lesion_pngs) == figures.MAX_LESION_FIGURES
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"Figures for {figures.MAX_LESION_FIGURES} of {n_les} lesions" in page
    assert "report.json" in page
    for n in range(n_les):
        assert re.search(rf"</span>Lesion {n + 1}</td>", page), n
    # the cap is a parameter: all of them when asked
    out = figures.write_slice_figures(res, rep, tmp_path, max_lesions=0)
    assert (out.lesions_total, out.lesions_shown, len(out.figures)) == (n_les, 0, 1)
