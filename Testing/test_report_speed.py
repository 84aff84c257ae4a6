"""The report's pictures at full size without whole-volume work, and unchanged by it.

Slices are read straight from the KJI array (checked against the former ``np.take`` formulation
and against SimpleITK on an oblique, anisotropic, flipped, non-cubic grid); segment roles read
label boxes slab by slab (checked against the former whole-volume algorithm, kept here as the
oracle), take the boxes a frozen label map already has and fill the slabs that decide first; a
slice figure's PNG is byte-identical to the one drawn the former way, and its outlines (no contour
sets), overlay (a table look-up), layout and PNG writer (unfiltered rows) give the pixels of the
former ones; the 3D view is rendered once with :data:`medseg.report.view3d.MAX_PEELS` depth peels
and looks as with 8.
Memory bounds are asserted with tracemalloc (numpy reports its buffers to it); no timings.
"""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from conftest import grid_centre_ras, make_sitk_image, sitk_index_to_ras, sphere_image
from medseg.core.box import Box
from medseg.core.errors import InputError, OutputError
from medseg.core.frames import sitk_to_volume
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.result import Result
from medseg.core.volume import Volume
from medseg.data.phantom import make_chest_phantom
from medseg.report import compare_page, figures, planes, style, view3d
from medseg.report.canvas import png_bytes
from medseg.report.figures import SliceTarget, draw_slice_figure
from medseg.report.style import Role
from medseg.surface.meshing import labelmap_to_meshes

OBLIQUE = "oblique_aniso_flipped"


# --------------------------------------------------------------------------- oracles (former code)
def _slice_hv_take(volume: Volume, lay: planes.PlaneLayout, index: int) -> np.ndarray:
    """The former slice extraction: ``np.take`` on the IJK-transposed array (copies it whole)."""
    ijk = volume.array.transpose(2, 1, 0)
    sl = np.take(ijk, index, axis=lay.axis)
    return sl if lay.h_axis < lay.v_axis else sl.T


def _filled_oracle(mask: np.ndarray, axes=(0, 1, 2)) -> np.ndarray:
    """The former whole-volume hole filling of segment_roles (optionally along some axes only)."""
    out = np.zeros_like(mask, dtype=bool)
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        return out
    box = found[0]
    sub = mask[box]
    filled = sub.copy()
    cross = ndimage.generate_binary_structure(2, 1)
    for axis in axes:
        structure = np.zeros((3, 3, 3), dtype=bool)
        np.moveaxis(structure, axis, 0)[1] = cross
        filled |= ndimage.binary_fill_holes(sub, structure=structure)
    out[box] = filled
    return out


def _roles_oracle(labelmap: LabelMap, lesion_ids=()) -> dict[str, Role]:
    """The former segment_roles: full-grid masks per segment, holes filled along all three axes."""
    lesions = set(lesion_ids)
    segs = list(labelmap.segments)
    arr = labelmap.volume.array
    present = {int(v) for v in np.unique(arr)}
    organs = [s for s in segs if s.id not in lesions and s.label_value in present]
    counts = {s.id: int((arr == s.label_value).sum()) for s in organs}
    roles = {s.id: (Role.LESION if s.id in lesions else Role.ORGAN) for s in segs}
    if len(organs) < 2:
        return roles
    for s in sorted(organs, key=lambda x: -counts[x.id]):
        others = [o for o in organs if o.id != s.id
                  and style.SHELL_MIN_INNER_FRACTION * counts[s.id] <= counts[o.id] < counts[s.id]]
        if not others:
            continue
        filled = _filled_oracle(arr == s.label_value)
        if any(int((filled & (arr == o.label_value)).sum()) >= style.SHELL_ENCLOSED_FRACTION * counts[o.id]
               for o in others):
            roles[s.id] = Role.SHELL
    return roles


def _peak_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """``fn(*args, **kwargs)`` and the peak of memory traced while it ran (bytes)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        out = fn(*args, **kwargs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


# --------------------------------------------------------------------------- slices
@pytest.fixture(scope="module")
def oblique_image() -> tuple[sitk.Image, Volume]:
    """The oblique, anisotropic (0.7 x 0.7 x 5 mm), flipped 72 x 64 x 12 grid with distinct
    random values, as a SimpleITK image and as a Volume."""
    img = make_sitk_image(OBLIQUE, sitk.sitkInt16)
    size = img.GetSize()
    arr = np.random.default_rng(3).permutation(np.arange(size[0] * size[1] * size[2]) - 20000)
    out = sitk.GetImageFromArray(arr.reshape(size[::-1]).astype(np.int16))
    out.CopyInformation(img)
    return out, sitk_to_volume(out)


def test_slice_matches_the_former_take_and_simpleitk(oblique_image):
    img, vol = oblique_image
    assert len(set(vol.shape_ijk)) == 3 and np.linalg.det(vol.direction) < 0  # non-cubic, flipped
    for lay in planes.plane_layouts(vol):
        n = vol.shape_ijk[lay.axis]
        for index in sorted({0, 1, n // 2, n - 1}):
            got = planes.slice_hv(vol, lay, index)
            assert got.dtype == vol.array.dtype and got.flags.c_contiguous
            assert np.array_equal(got, _slice_hv_take(vol, lay, index))
            # SimpleITK indexes (i, j, k) itself: its plane, transposed to [h, v]
            key: list = [slice(None)] * 3
            key[lay.axis] = index
            plane_ji = sitk.GetArrayFromImage(img[tuple(key)])  # remaining axes, slowest first
            want = plane_ji.T if lay.h_axis < lay.v_axis else plane_ji
            assert np.array_equal(got, want)
            # and one voxel by its index, with its physical point (RAS) where the Volume puts it
            h, v = got.shape[0] - 2, 1
            ijk = [0, 0, 0]
            ijk[lay.axis], ijk[lay.h_axis], ijk[lay.v_axis] = index, h, v
            assert got[h, v] == img.GetPixel(*ijk)
            assert np.allclose(vol.ijk_to_ras_points(np.array([ijk], float))[0], sitk_index_to_ras(img, ijk))


def test_slice_is_its_own_array_and_checks_the_index(oblique_image):
    _, vol = oblique_image
    before = vol.array.copy()
    for lay in planes.plane_layouts(vol):
        sl = planes.slice_hv(vol, lay, 0)
        sl[...] = 7
        with pytest.raises(InputError, match=r"outside the volume"):
            planes.slice_hv(vol, lay, vol.shape_ijk[lay.axis])
        with pytest.raises(InputError, match=r"=-1 is outside"):
            planes.slice_hv(vol, lay, -1)
    assert np.array_equal(vol.array, before)


def test_slice_reads_one_plane_not_the_volume():
    """The former np.take on a transposed view copied the whole volume at every call."""
    vol = Volume.from_geometry(np.zeros((40, 96, 128), np.int16), (0.7, 0.9, 2.0))
    biggest_plane = max(a * b for a, b in ((96, 128), (40, 128), (40, 96))) * 2
    for lay in planes.plane_layouts(vol):
        _, peak = _peak_bytes(planes.slice_hv, vol, lay, 5)
        assert peak < 3 * biggest_plane < vol.array.nbytes / 8
    _, peak = _peak_bytes(_slice_hv_take, vol, planes.plane_layouts(vol)[2], 5)
    assert peak >= vol.array.nbytes  # the oracle does copy it: the bound above can fail


# --------------------------------------------------------------------------- one slice figure
def _oblique_result() -> Result:
    """Organ sphere (label 3) with a lesion sphere (label 7) on the oblique flipped grid, CT values."""
    centre = grid_centre_ras(sphere_image(OBLIQUE, (0, 0, 0), 1.0))
    lesion_c = centre + np.array([4.0, -3.0, 2.0])
    organ = sitk_to_volume(sphere_image(OBLIQUE, centre, 16.0, pixel=sitk.sitkUInt8))
    lesion = sitk_to_volume(sphere_image(OBLIQUE, lesion_c, 6.0, pixel=sitk.sitkUInt8))
    labels = np.where(lesion.array > 0, 7, np.where(organ.array > 0, 3, 0)).astype(np.uint8)
    ct = np.where(labels == 7, 60, np.where(labels == 3, 30, -1000)).astype(np.int16)
    ct += np.arange(ct.size, dtype=np.int16).reshape(ct.shape) % 97  # texture: any swap shows
    preview = Volume(ct, organ.ijk_to_ras, "ct", {"modality": "CT"})
    segs = (Segment("organ", "Organ", (0.2, 0.8, 0.2), 3), Segment("lesion", "Lesion 1", (0.9, 0.1, 0.1), 7))
    lm = LabelMap(preview.with_array(labels, "labels"), segs)
    box = Box(lesion_c, (14.0, 13.0, 15.0), preview.direction, "lung nodule", 0.87, "lesion", "Lesion 1")
    return Result("t", lm, boxes=[box], lesions={"lesion": "lung nodule"}, preview=preview)


def test_slice_figure_png_is_byte_identical_to_the_former_drawing(monkeypatch):
    res = _oblique_result()
    window = planes.display_window(res.preview, "CT")
    targets = [SliceTarget("o", "Overview", res.boxes[0].center + np.array([-3.0, 2.0, 1.0])),
               SliceTarget("l", "Lesion: Lesion 1", np.asarray(res.boxes[0].center), "lesion")]
    new = [png_bytes(draw_slice_figure(res, res.preview, t, window)) for t in targets]
    # the former way: np.take slices, and a full (painted) draw to lay the figure out
    monkeypatch.setattr(planes, "slice_hv", _slice_hv_take)
    monkeypatch.setattr(figures, "slice_hv", _slice_hv_take)
    monkeypatch.setattr(figures, "lay_out", lambda fig: fig.canvas.draw())
    old = [png_bytes(draw_slice_figure(res, res.preview, t, window)) for t in targets]
    assert new == old
    # the figures do show the lesion (red outline pixels), so equal bytes are not both blank
    import matplotlib.image

    rgb = matplotlib.image.imread(io.BytesIO(new[1]), format="png")[..., :3]
    assert ((rgb[..., 0] > 0.7) & (rgb[..., 1] < 0.3) & (rgb[..., 2] < 0.3)).sum() > 50


# --------------------------------------------------------------------------- segment roles
def _labelmap(arr: np.ndarray, values: dict[str, int], spacing=(0.8, 1.1, 2.0)) -> LabelMap:
    vol = Volume.from_geometry(arr, spacing, (3.0, -2.0, 1.0))
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1)]
    return LabelMap(vol, tuple(Segment(sid, sid, colours[n % 5], v) for n, (sid, v) in enumerate(values.items())))


def _two_tube_case() -> tuple[np.ndarray, int, int]:
    """A shell (label 9) of two tubes around an organ (label 4): one tube, along array axis 0,
    closes around the organ's first 12 columns only in planes across axis 0; the other, along
    axis 1, around its last 12 columns only in planes across axis 1. Neither alone holds half the
    organ; both together hold 24 of its 28 columns."""
    arr = np.zeros((60, 30, 50), np.uint8)
    arr[10:20, 10:20, 10:40] = 4
    a = np.zeros_like(arr, dtype=bool)  # tube along axis 0 around j 10..19, i 10..21
    a[:, 9, 9:23] = a[:, 20, 9:23] = a[:, 9:21, 9] = a[:, 9:21, 22] = True
    b = np.zeros_like(arr, dtype=bool)  # tube along axis 1 around k 10..19, i 28..39
    b[9, :, 27:41] = b[20, :, 27:41] = b[9:21, :, 27] = b[9:21, :, 40] = True
    arr[a | b] = 9
    return arr, 9, 4


@pytest.mark.parametrize("slab_voxels", [style.SLAB_VOXELS, 700])
def test_roles_need_holes_of_every_axis_like_the_former_algorithm(monkeypatch, slab_voxels):
    monkeypatch.setattr(style, "SLAB_VOXELS", slab_voxels)
    arr, shell, organ = _two_tube_case()
    inner = arr == organ
    for axis in range(3):  # no single axis holds half the organ ...
        held = int((_filled_oracle(arr == shell, (axis,)) & inner).sum())
        assert held < style.SHELL_ENCLOSED_FRACTION * inner.sum()
    lm = _labelmap(arr, {"shell": shell, "organ": organ})
    assert style.segment_roles(lm) == _roles_oracle(lm) == {"shell": Role.SHELL, "organ": Role.ORGAN}
    arr2 = arr.copy()  # ... and with the second tube open, the shell holds too little
    arr2[15, :, 40] = 0
    lm2 = _labelmap(arr2, {"shell": shell, "organ": organ})
    assert style.segment_roles(lm2) == _roles_oracle(lm2) == {"shell": Role.ORGAN, "organ": Role.ORGAN}


def _random_case(seed: int) -> tuple[np.ndarray, dict[str, int], set[str]]:
    """Hollow balls with random gaps, blobs inside and outside them, a lesion, non-consecutive
    label values, a segment without voxels, a shell touching the grid's border."""
    rng = np.random.default_rng(seed)
    shape = tuple(int(x) for x in rng.integers(18, 34, 3))
    k, j, i = np.indices(shape)
    arr = np.zeros(shape, np.int16)
    values = {"body": 11, "lung": 3, "heart": 20, "spot": 6, "nodule": 14, "empty": 30}
    c = np.array(shape) / 2 + rng.normal(0, 2, 3)
    r = np.sqrt((k - c[0]) ** 2 + ((j - c[1]) * 1.2) ** 2 + (i - c[2]) ** 2)
    rad = min(shape) * rng.uniform(0.45, 0.6)
    arr[(r > rad - 2.5) & (r <= rad)] = values["body"]
    for _ in range(int(rng.integers(0, 4))):  # gaps in the wall
        g = rng.integers(0, shape, 3)
        arr[max(g[0] - 2, 0):g[0] + 2, max(g[1] - 2, 0):g[1] + 2, max(g[2] - 2, 0):g[2] + 2] = 0
    for name, scale in (("lung", 0.45), ("heart", 0.3), ("spot", 0.12)):
        p = c + rng.normal(0, rad * 0.35, 3)
        blob = (k - p[0]) ** 2 + (j - p[1]) ** 2 + (i - p[2]) ** 2 <= (rad * scale) ** 2
        arr[blob & (arr == 0)] = values[name]
    arr[(k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 <= 4] = values["nodule"]
    return arr, values, {"nodule"}


@pytest.mark.parametrize("seed", range(12))
def test_roles_match_the_former_algorithm_on_random_cases(monkeypatch, seed):
    arr, values, lesions = _random_case(seed)
    lm = _labelmap(arr, values)
    want = _roles_oracle(lm, lesions)
    assert style.segment_roles(lm, lesions) == want
    monkeypatch.setattr(style, "SLAB_VOXELS", 400)  # many slabs: their seams must not matter
    assert style.segment_roles(lm, lesions) == want


def test_roles_cases_cover_shells_and_organs():
    """The random cases are not trivial: some bodies are shells and some are not."""
    roles = [_roles_oracle(_labelmap(a, v), les)["body"] for a, v, les in map(_random_case, range(12))]
    assert Role.SHELL in roles and Role.ORGAN in roles


def test_roles_read_the_label_map_without_whole_grid_masks(monkeypatch):
    monkeypatch.setattr(style, "SLAB_VOXELS", 1 << 16)
    shape = (160, 200, 200)
    arr = np.zeros(shape, np.uint8)
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    r2 = (j - 100) ** 2 + (i - 100) ** 2
    arr[(r2 <= 90 ** 2) & (k >= 5) & (k < 155)] = 1  # body: a cylinder ...
    arr[((j - 100) ** 2 + (i - 55) ** 2 <= 35 ** 2) & (k >= 40) & (k < 120)] = 2  # ... with lungs
    arr[((j - 100) ** 2 + (i - 145) ** 2 <= 35 ** 2) & (k >= 40) & (k < 120)] = 3
    lm = _labelmap(arr, {"body": 1, "rl": 2, "ll": 3})
    roles, peak = _peak_bytes(style.segment_roles, lm)
    assert roles == {"body": Role.SHELL, "rl": Role.ORGAN, "ll": Role.ORGAN}
    assert peak < arr.nbytes / 4
    _, peak_old = _peak_bytes(_roles_oracle, lm)
    assert peak_old > arr.nbytes  # the former masks: the bound above can fail


# --------------------------------------------------------------------------- compare page centroid
def test_compare_centroid_matches_the_whole_grid_mean():
    arr, values, _ = _random_case(5)
    lm = _labelmap(arr, values)
    for ids in (["lung"], ["lung", "spot", "nodule"], ["body", "heart"], ["empty"], []):
        vals = [values[s] for s in ids]
        kji = np.argwhere(np.isin(arr, vals))
        want = kji.mean(axis=0)[::-1] if kji.size else None
        got = compare_page._centroid_ijk(lm, ids)
        assert (got is None) == (want is None)
        if want is not None:
            assert np.array_equal(got, want)


# --------------------------------------------------------------------------- 3D view
@pytest.fixture(scope="module")
def chest_meshes() -> Result:
    """The chest phantom's body (a shell), lungs, bones and lung lesions as smoothed meshes."""
    vol, truth = make_chest_phantom((48, 80, 96), (3.0, 3.0, 5.0), seed=0, noise_hu=0.0)
    labels = np.zeros(vol.shape_kji, np.uint8)
    labels[truth.labels > 0] = 1
    labels[truth.mask("Right lung", "Right pulmonary vessels")] = 2
    labels[truth.mask("Left lung", "Left pulmonary vessels")] = 3
    labels[truth.mask("bone")] = 4
    segs = [Segment("body", "Body", (0.9, 0.8, 0.7), 1), Segment("rl", "Right lung", (0.2, 0.6, 0.9), 2),
            Segment("ll", "Left lung", (0.6, 0.3, 0.9), 3), Segment("bone", "Bones", (0.95, 0.9, 0.7), 4)]
    kinds = {}
    for n, les in enumerate(truth.lung_lesions):
        labels[truth.mask(les.name)] = 5 + n
        segs.append(Segment(f"lesion_{n + 1}", les.name, (0.9, 0.1, 0.1), 5 + n))
        kinds[f"lesion_{n + 1}"] = les.kind
    lm = LabelMap(vol.with_array(labels, "labels"), tuple(segs))
    return Result("ct-chest", lm, meshes=labelmap_to_meshes(lm, smoothing=0.3), lesions=kinds, preview=vol)


def _rgb(data: bytes) -> np.ndarray:
    import matplotlib.image

    assert data.startswith(b"\x89PNG")
    return np.rint(matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3] * 255).astype(int)


def test_3d_view_is_rendered_once(chest_meshes, monkeypatch):
    from vtkmodules.vtkCommonCore import vtkCommand
    from vtkmodules.vtkRenderingCore import vtkRenderWindow

    renders = []

    def counted() -> vtkRenderWindow:
        w = vtkRenderWindow()
        w.AddObserver(vtkCommand.StartEvent, lambda *_: renders.append(1))
        return w

    monkeypatch.setattr(view3d, "vtkRenderWindow", counted)
    data = view3d.render_3d_vtk(chest_meshes, (200, 200), frozenset(chest_meshes.lesions))
    assert data.startswith(b"\x89PNG") and len(renders) == 1


def test_3d_view_with_fewer_peels_looks_the_same(chest_meshes, monkeypatch):
    """Body shell, translucent lungs and bones, opaque lesions: MAX_PEELS depth peels against 8."""
    roles = style.segment_roles(chest_meshes.labelmap, frozenset(chest_meshes.lesions))
    shells = frozenset(k for k, r in roles.items() if r == Role.SHELL)
    assert shells == {"body"}
    kw = {"size": view3d.VIEW3D_SIZE, "lesion_ids": frozenset(chest_meshes.lesions), "shell_ids": shells}
    now = _rgb(view3d.render_3d_vtk(chest_meshes, **kw))
    monkeypatch.setattr(view3d, "MAX_PEELS", 8)
    eight = _rgb(view3d.render_3d_vtk(chest_meshes, **kw))
    monkeypatch.setattr(view3d, "MAX_PEELS", 1)
    one = _rgb(view3d.render_3d_vtk(chest_meshes, **kw))
    diff = np.abs(now - eight).max(axis=-1)  # 0..255 per pixel
    # measured with 4 peels: mean 0.26, 1.1 % of pixels more than 8 apart (where ribs cross the
    # lungs), none more than 48
    assert diff.mean() < 0.5 and (diff > 8).mean() < 0.02 and (diff > 64).sum() == 0
    # the comparison can fail: a single peel does look different
    assert (np.abs(one - eight).max(axis=-1) > 8).mean() > 0.02


def test_vtk_check_starts_early_only_when_it_will_be_asked(chest_meshes, monkeypatch):
    monkeypatch.delenv(view3d.RENDERER_ENV, raising=False)
    monkeypatch.setattr(view3d, "_vtk_probe_cache", None)
    monkeypatch.setattr(view3d, "_vtk_probe_proc", None)
    empty = Result("t", chest_meshes.labelmap)
    for res, renderer in ((chest_meshes, "matplotlib"), (chest_meshes, "none"), (empty, "auto")):
        view3d.start_vtk_probe(res, renderer)
        assert view3d._vtk_probe_proc is None
    view3d.start_vtk_probe(chest_meshes, "auto")
    started = view3d._vtk_probe_proc
    assert started is not None
    early = view3d.vtk_offscreen_available()
    assert view3d._vtk_probe_proc is None and started.returncode is not None  # collected, not left running
    monkeypatch.setattr(view3d, "_vtk_probe_cache", None)
    assert view3d.vtk_offscreen_available() == early  # the same answer as a check made when asked
    view3d.start_vtk_probe(chest_meshes, "vtk")  # answered already: nothing more is started
    assert view3d._vtk_probe_proc is None


# --------------------------------------------------------------------------- the figures' cheaper drawing
def _decoded(data: bytes) -> np.ndarray:
    """The pixels of PNG ``data`` as Pillow decodes them (uint8, channels last)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def _savefig_png(fig, facecolor=None) -> bytes:
    """The former ``png_bytes``: matplotlib's own PNG writer (Pillow, zlib level 3)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor() if facecolor is None else facecolor,
                pil_kwargs={"compress_level": 3})
    return buf.getvalue()


def _contour_outline(ax, xs, ys, mask, color, linewidth):
    """The former outline: a contour set of the mask."""
    return ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=[color], linewidths=linewidth)


def _mask_fill_rgba(lab, fills):
    """The former overlay: one boolean mask per label value."""
    rgba = np.zeros((*lab.shape, 4), dtype=np.float32)
    for v, c in fills.items():
        m = lab == v
        rgba[m, :3] = c[:3]
        rgba[m, 3] = c[3]
    return rgba


def _outline_masks() -> list[np.ndarray]:
    """Masks that exercise the contour paths: blobs with holes, pieces touching every edge (open
    lines), a single pixel, a diagonal chain (corners), a long ragged shape (hundreds of vertices)."""
    rng = np.random.default_rng(11)
    rows, cols = np.mgrid[:37, :53]
    ring = ((rows - 18) ** 2 + ((cols - 20) * 0.8) ** 2 <= 140) & ((rows - 18) ** 2 + (cols - 20) ** 2 > 30)
    edges = np.zeros((37, 53), bool)
    edges[:5, 10:30] = edges[20:, -3:] = edges[-1, :4] = edges[10:14, 0] = True
    single = np.zeros((37, 53), bool)
    single[7, 9] = True
    diagonal = np.eye(37, 53, k=4, dtype=bool) | np.eye(37, 53, k=5, dtype=bool)
    ragged = ndimage.binary_opening(rng.random((37, 53)) < 0.55)
    return [ring, edges, single, diagonal, ragged]


def test_outline_is_pixel_identical_to_a_contour_set():
    from medseg.report.canvas import new_figure

    def draw(outline, mask, xs, ys) -> np.ndarray:
        fig = new_figure(3.1, 2.3, dpi=90)
        ax = fig.add_subplot(1, 1, 1)
        ax.set_facecolor("black")
        outline(ax, xs, ys, mask, (0.9, 0.2, 0.1), 2.0)
        outline(ax, xs, ys, ndimage.binary_dilation(mask, iterations=2), (0.2, 0.8, 0.3), 1.0)  # around it
        ax.plot([xs[0], xs[-1]], [ys[0], ys[-1]], color="yellow")
        ax.set_xlim(xs[0] - 1.0, xs[-1] + 2.0)
        ax.set_ylim(ys[0] - 1.5, ys[-1] + 1.0)
        ax.set_aspect("equal")
        return _decoded(_savefig_png(fig))

    for n, mask in enumerate(_outline_masks()):
        # anisotropic pixels, columns and rows of different lengths, not starting at 0
        xs, ys = 3.0 + np.arange(mask.shape[1]) * 0.7, -2.0 + np.arange(mask.shape[0]) * 1.9
        new = draw(figures.add_outline, mask, xs, ys)
        old = draw(_contour_outline, mask, xs, ys)
        assert np.array_equal(new, old), f"mask {n}: {(new != old).any(axis=-1).sum()} pixels differ"
        red = (new[..., 0] > 200) & (new[..., 1] < 120) & (new[..., 2] < 100)
        green = (new[..., 1] > 150) & (new[..., 0] < 120) & (new[..., 2] < 120)
        assert red.sum() > 5 and green.sum() > 5, f"mask {n}: an outline is not drawn"  # not both blank


def test_outline_paths_are_those_of_the_contour_set():
    from medseg.report.canvas import new_figure

    ax = new_figure(2.0, 2.0).add_subplot(1, 1, 1)
    for mask in _outline_masks():
        xs, ys = np.arange(mask.shape[1]) * 0.7, np.arange(mask.shape[0]) * 1.9
        new = figures.add_outline(ax, xs, ys, mask, (1.0, 0.0, 0.0), 1.5)
        old = _contour_outline(ax, xs, ys, mask, (1.0, 0.0, 0.0), 1.5)
        (p_new,), (p_old,) = new.get_paths(), old.get_paths()
        assert np.array_equal(p_new.vertices, p_old.vertices) and np.array_equal(p_new.codes, p_old.codes)
        assert np.array_equal(new.get_edgecolor(), old.get_edgecolor())
        assert list(new.get_linewidths()) == list(old.get_linewidths()) == [1.5]
        assert new.get_zorder() == old.get_zorder() and new.get_transform() == old.get_transform()


def test_fill_rgba_matches_one_mask_per_value():
    rng = np.random.default_rng(5)
    fills = {3: (0.2, 0.8, 0.2, 0.3), 7: (0.9, 0.1, 0.1, 0.2), 40: (0.1, 0.2, 0.9, 0.0)}
    lab = rng.choice(np.array([0, 3, 7, 9, 40], np.uint8), size=(23, 31))  # 9: a value with no fill
    got = figures.fill_rgba(lab, fills)
    assert got.dtype == np.float32 and got.shape == (23, 31, 4)
    assert np.array_equal(got, _mask_fill_rgba(lab, fills))
    assert np.array_equal(got[lab == 7], np.tile(np.float32(fills[7]), ((lab == 7).sum(), 1)))
    assert not got[(lab == 0) | (lab == 9)].any()
    # values beyond the table, negative ones, and no fills: the per-value masks
    big = np.where(lab == 40, figures.MAX_TABLE_LABEL + 5, np.where(lab == 9, -4, lab)).astype(np.int32)
    big_fills = {**fills, figures.MAX_TABLE_LABEL + 5: (0.5, 0.5, 0.5, 0.3)}
    assert np.array_equal(figures.fill_rgba(big, big_fills), _mask_fill_rgba(big, big_fills))
    assert not figures.fill_rgba(lab, {}).any()


def test_png_bytes_has_the_pixels_and_metadata_of_savefig():
    from PIL import Image

    from medseg.report.canvas import encode_png, new_figure

    fig = new_figure(2.3, 1.7, dpi=80)
    fig.patch.set_facecolor("black")
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.random.default_rng(2).random((17, 29)), cmap="gray")
    ax.text(0.5, 0.5, "R", color="yellow", transform=ax.transAxes)
    for facecolor in (None, "white", (0.2, 0.3, 0.4, 0.5)):
        new, old = png_bytes(fig, facecolor), _savefig_png(fig, facecolor)
        assert np.array_equal(_decoded(new), _decoded(old))
        assert _decoded(new).shape == (136, 184, 4)
        with Image.open(io.BytesIO(new)) as a, Image.open(io.BytesIO(old)) as b:
            assert a.mode == b.mode == "RGBA" and a.info == b.info  # Software text, dpi
    rgb = np.random.default_rng(3).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(_decoded(encode_png(rgb)), rgb)
    for bad in (rgb.astype(np.float32), rgb[..., :2], rgb[:0], rgb[..., 0]):
        with pytest.raises(OutputError, match=r"uint8 \(height, width, 3 or 4\) image, got"):
            encode_png(bad)


def test_slice_figures_are_pixel_identical_to_the_former_drawing(monkeypatch, tmp_path):
    """Outlines, overlay, layout and PNG writing of the former code against the present ones,
    through write_slice_figures, on the oblique anisotropic flipped non-cubic grid with label
    values 3 and 7."""
    res = _oblique_result()
    report = {"segments": [
        {"id": "organ", "is_lesion": False, "centroid_ras": list(res.boxes[0].center + np.array([-3.0, 2.0, 1.0])),
         "voxel_count": 500},
        {"id": "lesion", "is_lesion": True, "centroid_ras": list(res.boxes[0].center), "voxel_count": 60},
    ], "inputs": [{"modality": "CT"}]}
    (tmp_path / "new" / figures.FIGURES_DIR).mkdir(parents=True)
    (tmp_path / "old" / figures.FIGURES_DIR).mkdir(parents=True)
    new = figures.write_slice_figures(res, report, tmp_path / "new")
    monkeypatch.setattr(figures, "add_outline", _contour_outline)
    monkeypatch.setattr(figures, "fill_rgba", _mask_fill_rgba)
    monkeypatch.setattr(figures, "lay_out", lambda fig: fig.canvas.draw())
    monkeypatch.setattr(figures, "png_bytes", _savefig_png)
    old = figures.write_slice_figures(res, report, tmp_path / "old")
    assert new.figures == old.figures and len(new.figures) == 2
    for rel, _ in new.figures:
        a, b = _decoded((tmp_path / "new" / rel).read_bytes()), _decoded((tmp_path / "old" / rel).read_bytes())
        assert np.array_equal(a, b), f"{rel}: {(a != b).any(axis=-1).sum()} pixels differ"
        red = (a[..., 0] > 180) & (a[..., 1] < 80) & (a[..., 2] < 80)
        green = (a[..., 1] > 150) & (a[..., 0] < 120) & (a[..., 2] < 120)
        assert red.sum() > 50 and green.sum() > 50  # the lesion and the organ are outlined


def test_young_garbage_is_collected_and_old_objects_watched_again():
    import gc
    import weakref

    class Node:
        pass

    assert gc.get_freeze_count() == 0
    with figures.collect_young_garbage():
        assert gc.get_freeze_count() > 0  # the objects from before are left alone
        a, b = Node(), Node()
        a.other, b.other = b, a  # a reference cycle, like a drawn figure's
        gone = weakref.ref(a)
        del a, b
    assert gone() is None and gc.get_freeze_count() == 0
    with pytest.raises(ValueError, match="inside"), figures.collect_young_garbage():
        raise ValueError("inside")
    assert gc.get_freeze_count() == 0
    gc.freeze()  # frozen by the program around: left frozen
    try:
        frozen = gc.get_freeze_count()
        with figures.collect_young_garbage():
            pass
        # still frozen (unfreezing would make it 0); frozen objects that died meanwhile leave the count
        assert 0 < gc.get_freeze_count() <= frozen and gc.get_freeze_count() > frozen // 2
    finally:
        gc.unfreeze()


# --------------------------------------------------------------------------- roles, cheaper
def test_plane_holes_match_binary_fill_holes():
    rng = np.random.default_rng(8)
    cross = ndimage.generate_binary_structure(2, 1)
    for shape in ((9, 14, 11), (1, 12, 7), (13, 1, 10), (6, 8, 1)):
        mask = ndimage.binary_dilation(rng.random(shape) < 0.25)  # walls with holes of all sizes
        for axis in range(3):
            structure = np.zeros((3, 3, 3), dtype=bool)
            np.moveaxis(structure, axis, 0)[1] = cross
            want = ndimage.binary_fill_holes(mask, structure=structure) & ~mask
            got = style._plane_holes(mask, axis)
            assert got.dtype == bool and np.array_equal(got, want), (shape, axis)
    ring = np.zeros((3, 7, 7), bool)
    ring[:, 1:6, 1:6] = True
    ring[:, 2:5, 2:5] = False  # a square tube along axis 0: a hole in planes across axis 0 only
    assert style._plane_holes(ring, 0)[:, 2:5, 2:5].all() and style._plane_holes(ring, 0).sum() == 27
    assert not style._plane_holes(ring, 1).any() and not style._plane_holes(ring, 2).any()


def test_roles_use_the_frozen_label_maps_boxes_and_skip_slabs_without_inner_labels(monkeypatch):
    """A frozen label map's boxes (computed once for all stages) are not searched again; the
    slabs holding most of an inner label are filled first, and the answer is the former
    algorithm's."""
    monkeypatch.setattr(style, "SLAB_VOXELS", 1 << 15)
    shape = (90, 61, 70)  # k, j, i
    arr = np.zeros(shape, np.uint8)
    k, j, i = np.ogrid[:shape[0], :shape[1], :shape[2]]
    arr[((j - 30) ** 2 + (i - 35) ** 2 <= 27 ** 2) & (k >= 2) & (k < 88)] = 9  # body
    arr[((j - 24) ** 2 + (i - 22) ** 2 <= 12 ** 2) & (k >= 40) & (k < 80)] = 4  # lungs, high up
    arr[((j - 24) ** 2 + (i - 48) ** 2 <= 12 ** 2) & (k >= 40) & (k < 80)] = 6
    arr[((j - 48) ** 2 + (i - 35) ** 2 <= 6 ** 2) & (k >= 2) & (k < 88)] = 2  # a spine, all the way
    lm = _labelmap(arr, {"body": 9, "rl": 4, "ll": 6, "spine": 2}, spacing=(0.9, 0.7, 2.5)).freeze()
    want = _roles_oracle(lm)
    assert want == {"body": Role.SHELL, "rl": Role.ORGAN, "ll": Role.ORGAN, "spine": Role.ORGAN}
    body_box = lm.bounding_slices()[9]  # as the pipeline's stages do
    assert body_box is not None

    def no_scan(*args, **kwargs):
        raise AssertionError("the label map was searched again")

    monkeypatch.setattr("medseg.core.labelmap.label_bounding_slices", no_scan)
    filled = []
    plane_holes = style._plane_holes
    monkeypatch.setattr(style, "_plane_holes",
                        lambda mask, axis: filled.append((axis, mask.shape)) or plane_holes(mask, axis))
    assert style.segment_roles(lm) == want
    plane = (body_box[1].stop - body_box[1].start) * (body_box[2].stop - body_box[2].start)
    slab_planes = style.SLAB_VOXELS // plane
    assert slab_planes == 10 and all(axis == 0 for axis, _ in filled)  # decided in axial planes
    # slabs of 10 planes from k = 2: the spine lies in all 9, the lungs (k 40..79) fill 3 whole;
    # the two first of those hold half a lung. In k order, the former code filled the holes of 5
    # slabs (k 2..51) before the spine was half held.
    assert len(filled) == 2
