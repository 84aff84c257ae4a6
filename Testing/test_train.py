"""``medseg train``: data rules and refusals, tiny networks learning synthetic shapes (3D balls and boxes on
anisotropic, flipped and oblique non-cubic grids with label values 3 and 7; 2D disks on one-slice NRRD
volumes), resume == uninterrupted (weights compared exactly on the CPU), the trained folder running
through ``medseg run --model``, ``--licence`` required, ``--init`` mismatches refused, cross-validation,
anti-aliased PNG masks read above ``--mask-threshold``, and a 2D U-Net learning the lungs of real chest X-rays.

Dice bars (short CPU runs, stated here once): 3D balls/boxes >= 0.70 per structure on the validation
case and on a new oblique case through ``medseg run``; 2D disks >= 0.80; Shenzhen lungs >= 0.85 per
held-out film.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medseg.cli import main
from medseg.core.errors import CancelledError, InputError
from medseg.core.frames import volume_to_sitk
from medseg.core.labelmap import LabelMap, Segment
from medseg.core.progress import CancelToken
from medseg.core.volume import Volume
from medseg.io.seg_nrrd import read_seg_nrrd, write_seg_nrrd
from medseg.pipeline.train import split_folds, train
from medseg.pipeline.train_config import TrainConfig, parse_flips
from medseg.pipeline.train_data import CaseFiles, Structure, find_cases, load_cases

BALL, BOX = 3, 7  # non-consecutive label values
DICE_3D, DICE_2D = 0.70, 0.80
SHAPE_3D = (18, 30, 26)  # K, J, I: non-cubic
SPACING_3D = (1.0, 1.2, 2.0)  # i, j, k mm: anisotropic


def rotation(axis, degrees: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * (k @ k)


DIRECTIONS = {
    "axial": np.eye(3),
    "flipped": np.diag([-1.0, -1.0, 1.0]),  # LPS-like axes
    "oblique": rotation((1.0, 2.0, 0.5), 20.0) @ np.diag([1.0, -1.0, 1.0]),
}


def shapes_case(seed: int, direction: np.ndarray, shape=SHAPE_3D, spacing=SPACING_3D) -> tuple[Volume, np.ndarray]:
    """A CT-like volume (air -800 HU + noise) with a ball (60 HU) and a box (400 HU) placed at random, in
    millimetres of the volume's own axes; the truth label map holds BALL and BOX."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    x, y, z = i * spacing[0], j * spacing[1], k * spacing[2]
    ext = np.array([shape[2] * spacing[0], shape[1] * spacing[1], shape[0] * spacing[2]])
    c = rng.uniform(0.3, 0.7, 3) * ext
    r = rng.uniform(5.0, 7.0)
    ball = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2 <= r * r
    b0 = rng.uniform(0.1, 0.3, 3) * ext
    half = rng.uniform(3.0, 5.0, 3)
    box = (np.abs(x - b0[0] - half[0]) <= half[0]) & (np.abs(y - b0[1] - half[1]) <= half[1]) & \
          (np.abs(z - b0[2] - half[2]) <= half[2]) & ~ball
    img = -800.0 + rng.normal(0, 25, shape)
    img[ball] = 60.0 + rng.normal(0, 25, int(ball.sum()))
    img[box] = 400.0 + rng.normal(0, 25, int(box.sum()))
    truth = np.zeros(shape, np.uint8)
    truth[ball], truth[box] = BALL, BOX
    vol = Volume.from_geometry(img.astype(np.int16), spacing, (10.0, -20.0, 5.0), direction, f"case{seed}")
    return vol, truth


def disk_case(seed: int, shape=(1, 40, 48), spacing=(0.8, 0.7, 1.0)) -> tuple[Volume, np.ndarray]:
    """A one-slice image (2D, like an X-ray) with a bright disk (value 1) on a noisy background."""
    rng = np.random.default_rng(seed)
    _k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = rng.uniform([12, 12], [shape[2] - 12, shape[1] - 12])
    r = rng.uniform(6, 9)
    disk = (i - c[0]) ** 2 + (j - c[1]) ** 2 <= r * r
    img = rng.normal(100, 15, shape)
    img[disk] += 120
    return Volume.from_geometry(img.astype(np.float32), spacing, (0, 0, 0), np.eye(3), f"xr{seed}"), \
        disk.astype(np.uint8)


SEGMENTS_3D = (Segment("Segment_1", "Ball", (0.9, 0.2, 0.2), BALL), Segment("Segment_2", "Box", (0.2, 0.3, 0.9), BOX))


def write_pair(folder: Path, name: str, vol: Volume, truth: np.ndarray, segments=SEGMENTS_3D,
               label_ending: str = ".seg.nrrd") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"{name}.nrrd"
    sitk.WriteImage(volume_to_sitk(vol), str(image))
    label = folder / f"{name}{label_ending}"
    lm = LabelMap(vol.with_array(truth), tuple(segments))
    if label_ending.endswith(".seg.nrrd"):
        write_seg_nrrd(lm, label)
    else:
        sitk.WriteImage(volume_to_sitk(lm.volume), str(label))
    return image, label


def drop_segment(path: Path, index: int) -> None:
    """Remove segment ``index``'s fields from a .seg.nrrd, keeping its voxels (as a hand-edited file might)."""
    import nrrd

    data, header = nrrd.read(str(path), index_order="C")
    for key in [k for k in header if k.startswith(f"Segment{index}_")]:
        del header[key]
    nrrd.write(str(path), data, header, index_order="C")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def run_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["-q", "train", str(data), "--out", str(out), "--licence", "CC0-1.0", "--device", "cpu", *extra]


# ----------------------------------------------------------------------------- data rules
def test_naming_rules_flat_split_and_table(tmp_path):
    v, t = disk_case(0)
    flat = tmp_path / "flat"
    write_pair(flat, "a", v, t, segments=(Segment("Segment_1", "Disk", (1, 0, 0), 1),))
    write_pair(flat, "b", v, t, segments=(), label_ending="_label.nii.gz")
    write_pair(flat, "c", v, t, segments=(), label_ending="_mask.nrrd")
    got = find_cases(flat)
    assert [(c.name, c.image.name, c.label.name) for c in got] == [
        ("a", "a.nrrd", "a.seg.nrrd"), ("b", "b.nrrd", "b_label.nii.gz"), ("c", "c.nrrd", "c_mask.nrrd")]
    split = tmp_path / "split"
    for n in ("x2", "x1"):
        write_pair(split / "images", n, v, t, segments=(), label_ending="_unused.nrrd")
        (split / "images" / f"{n}_unused.nrrd").rename(split / f"{n}.tmp")
        (split / "labels").mkdir(exist_ok=True)
        (split / f"{n}.tmp").rename(split / "labels" / f"{n}.nrrd")
    assert [(c.name, c.label.parent.name) for c in find_cases(split)] == [("x1", "labels"), ("x2", "labels")]
    table = tmp_path / "cases.csv"
    table.write_text("image,label,case\nflat/a.nrrd,flat/a.seg.nrrd,first\nflat/b.nrrd,flat/b_label.nii.gz,\n")
    got = find_cases(table)
    assert [(c.name, c.image, c.label) for c in got] == [
        ("b", flat / "b.nrrd", flat / "b_label.nii.gz"), ("first", flat / "a.nrrd", flat / "a.seg.nrrd")]
    # an image without its label is named, not skipped
    sitk.WriteImage(volume_to_sitk(v), str(flat / "lonely.nrrd"))
    with pytest.raises(InputError, match=r"lonely\.nrrd has no label"):
        find_cases(flat)


def test_label_scheme_names_channels_and_values(tmp_path):
    """Same name -> same channel in every case, whatever its value there; label images named by --labels."""
    v, t = shapes_case(1, DIRECTIONS["axial"])
    a = write_pair(tmp_path, "a", v, t)
    swapped = np.where(t == BALL, 9, np.where(t == BOX, 4, 0)).astype(np.uint8)
    b = write_pair(tmp_path, "b", v, swapped, segments=(Segment("s1", "Box", (0, 0, 1), 4),
                                                         Segment("s2", "Ball", (1, 0, 0), 9)))
    c = write_pair(tmp_path, "c", v, t, segments=(), label_ending="_label.nrrd")
    files = [CaseFiles("a", *a), CaseFiles("b", *b), CaseFiles("c", *c)]
    cases, scheme = load_cases(files, {BALL: "Ball", BOX: "Box"})
    assert [(s.name, s.value, s.channel) for s in scheme.structures] == [("Ball", BALL, 1), ("Box", BOX, 2)]
    assert scheme.structures[0].color == pytest.approx((0.9, 0.2, 0.2))
    for case in cases:  # every case: the ball on channel 1 / value 3, the box on channel 2 / value 7
        assert np.array_equal(case.channels == 1, t == BALL) and np.array_equal(case.channels == 2, t == BOX)
        assert np.array_equal(case.values, t)


def test_bad_training_data_named(tmp_path, capsys):
    v, t = shapes_case(2, DIRECTIONS["axial"])
    good = write_pair(tmp_path / "good", "ok", v, t)
    # a label on another grid (origin moved by 3 mm)
    moved = Volume(v.array, v.ijk_to_ras.copy(), v.name)
    moved.ijk_to_ras[0, 3] += 3.0
    img = tmp_path / "grid" / "shifted.nrrd"
    img.parent.mkdir()
    sitk.WriteImage(volume_to_sitk(moved), str(img))
    with pytest.raises(InputError, match=r"case shifted: the label is not on its image's grid.*origin"):
        load_cases([CaseFiles("shifted", img, good[1])])
    # an empty label
    e = write_pair(tmp_path / "empty", "blank", v, np.zeros_like(t), segments=())
    with pytest.raises(InputError, match=r"case blank: label .*blank\.seg\.nrrd is empty"):
        load_cases([CaseFiles("ok", *good), CaseFiles("blank", *e)])
    # a value no name covers (value 5 has no segment, while names are in use)
    extra = t.copy()
    extra[0, 0, :3] = 5
    u = write_pair(tmp_path / "unnamed", "odd", v, extra, segments=(*SEGMENTS_3D, Segment("x", "X", (0, 1, 0), 5)))
    drop_segment(u[1], 2)
    with pytest.raises(InputError, match=r"case odd: label value\(s\) \[5\] .* have no name"):
        load_cases([CaseFiles("ok", *good), CaseFiles("odd", *u)])
    # ... and through the command: exit 2, the case named on stderr
    data = tmp_path / "unnamed"
    write_pair(data, "ok", v, t)
    assert main(run_args(data, tmp_path / "m", "--epochs", "1")) == 2
    assert "case odd: label value(s) [5]" in capsys.readouterr().err


def test_licence_required_and_option_errors(tmp_path, capsys):
    v, t = disk_case(0)
    write_pair(tmp_path / "d", "a", v, t, segments=(Segment("s", "Disk", (1, 0, 0), 1),))
    rc = main(["-q", "train", str(tmp_path / "d"), "--out", str(tmp_path / "m")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "licence is required" in err and "--licence" in err
    assert not (tmp_path / "m").exists()
    with pytest.raises(InputError, match="multiples of 4"):
        train(TrainConfig(tmp_path / "d", tmp_path / "m2", "MIT", features=(4, 8, 16), patch=(30,), epochs=1,
                          device="cpu"))
    assert parse_flips("auto") is None and parse_flips("none") == () and parse_flips("si,lr") == ("lr", "si")
    with pytest.raises(InputError, match="flips must be"):
        parse_flips("up")
    assert Structure("Left lung", 1, 1, (1, 0, 0)).sided and Structure("x", 1, 1, (1, 0, 0), "right_lung").sided
    assert not Structure("Liver", 1, 1, (1, 0, 0), "liver").sided


def test_split_folds_cover_every_case_once():
    names = [f"c{i}" for i in range(7)]
    folds = split_folds(names, 3, 0.2, seed=4)
    vals = sorted(i for _t, v in folds for i in v)
    assert vals == list(range(7))
    for tr, va in folds:
        assert not set(tr) & set(va) and sorted(tr + va) == list(range(7))
    (tr, va), = split_folds(names, 1, 0.3, seed=4)
    assert len(va) == 2 and len(tr) == 5
    assert split_folds(["only"], 1, 0.2, 0) == [([0], [0])]


# ----------------------------------------------------------------------------- 3D: learn, card, run
THREE_D = ("--features", "8", "16", "32", "--patch", "24", "24", "16", "--spacing", "1.2", "1.2", "2.0",
           "--normalization", "ct-window", "--ct-window", "-1000", "500", "--batch-size", "2",
           "--samples-per-case", "2", "--lr", "0.01", "--seed", "1")


@pytest.fixture(scope="module")
def model_3d(tmp_path_factory):
    """A tiny 3D UNet trained on 5 cases (axial, flipped, oblique grids), one held out for validation."""
    root = tmp_path_factory.mktemp("train3d")
    data = root / "data"
    dirs = ["axial", "flipped", "oblique", "axial", "flipped"]
    for n, d in enumerate(dirs):
        write_pair(data, f"case{n}", *shapes_case(10 + n, DIRECTIONS[d]))
    out = root / "shapes3d"
    assert main(run_args(data, out, "--epochs", "14", *THREE_D)) == 0
    return out


def test_3d_model_learns_and_card_says_what_it_is(model_3d):
    card = json.loads((model_3d / "model_card.json").read_text())
    assert card["name"] == "shapes3d" and card["dims"] == 3 and card["network"]["class"] == "UNet"
    assert [(lab["name"], lab["value"], lab["channel"]) for lab in card["labels"]] == [("Ball", BALL, 1),
                                                                                       ("Box", BOX, 2)]
    assert card["labels"][0]["color"] == pytest.approx([0.9, 0.2, 0.2], abs=1e-6)
    assert card["preprocessing"] == {"orientation": "RAS", "target_spacing_mm": [1.2, 1.2, 2.0],
                                     "normalization": {"kind": "ct-window", "window": [-1000.0, 500.0]}}
    assert card["inference"]["roi_size"] == [24, 24, 16]
    assert card["licence"] == {"name": "CC0-1.0", "commercial_use": False}
    tr = card["training"]
    assert tr["data"]["cases"] == 5 and tr["data"]["train_cases"] == 4
    assert tr["data"]["spacing_mm"] == {"min": [1.0, 1.2, 2.0], "max": [1.0, 1.2, 2.0]}
    assert tr["options"]["augmentation"]["flips"] == ["lr"]  # no structure has a side
    from medseg.models.weights import sha256_file

    assert card["weights"]["sha256"] == sha256_file(model_3d / "model.pt")
    log = json.loads((model_3d / "training_log.json").read_text())
    assert log["schema"] == "medseg-training-log/1" and len(log["epochs"]) == 14
    assert log["validation_cases"] == tr["validation"]["cases"] and len(log["validation_cases"]) == 1
    first, last = log["epochs"][0], log["epochs"][-1]
    assert set(last) == {"epoch", "loss", "lr", "val_dice", "val_dice_mean", "time_s"}
    assert last["loss"] < first["loss"]
    assert last["val_dice"]["Ball"] >= DICE_3D and last["val_dice"]["Box"] >= DICE_3D, last
    assert tr["validation"]["dice"] == last["val_dice"]


def test_3d_model_runs_through_medseg_run_on_an_oblique_grid(model_3d, tmp_path):
    vol, truth = shapes_case(99, rotation((0.3, 1.0, 0.2), 25.0) @ np.diag([-1.0, 1.0, 1.0]), shape=(16, 34, 28),
                             spacing=(0.9, 1.1, 2.2))
    src = tmp_path / "new case.nrrd"
    sitk.WriteImage(volume_to_sitk(vol), str(src))
    out = tmp_path / "out"
    assert main(["-q", "run", str(src), "--model", str(model_3d), "--out", str(out), "--no-models", "--no-html",
                 "--device", "cpu"]) == 0
    seg = read_seg_nrrd(out / "segmentation.seg.nrrd")
    assert {s.name: s.label_value for s in seg.segments} == {"Ball": BALL, "Box": BOX}
    # on the input's grid, as SimpleITK sees both files
    a, b = sitk.ReadImage(str(src)), sitk.ReadImage(str(out / "segmentation.seg.nrrd"))
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)
    assert dice(seg.array == BALL, truth == BALL) >= DICE_3D
    assert dice(seg.array == BOX, truth == BOX) >= DICE_3D


def test_init_fine_tunes_and_refuses_a_mismatch(model_3d, tmp_path):
    data = tmp_path / "other"
    v, t = shapes_case(50, DIRECTIONS["axial"])
    write_pair(data, "a", v, np.where(t == BALL, 1, 0).astype(np.uint8),
               segments=(Segment("s", "Sphere", (1, 0, 0), 1),))
    write_pair(data, "b", *shapes_case(51, DIRECTIONS["axial"]))
    cfg = {"licence": "MIT", "device": "cpu", "epochs": 1, "init": model_3d}
    with pytest.raises(InputError, match=r"differ from the --init model's \['Ball', 'Box'\].*not in the model: "
                                         r"\['Sphere'\]"):
        train(TrainConfig(data, tmp_path / "m1", **cfg))
    same = tmp_path / "same"
    write_pair(same, "a", *shapes_case(52, DIRECTIONS["axial"]))
    write_pair(same, "b", *shapes_case(53, DIRECTIONS["flipped"]))
    with pytest.raises(InputError, match="--network segresnet differs from the --init model"):
        train(TrainConfig(same, tmp_path / "m2", network="segresnet", **cfg))
    with pytest.raises(InputError, match="--dims 2 differs"):
        train(TrainConfig(same, tmp_path / "m3", dims=2, **cfg))
    result = train(TrainConfig(same, tmp_path / "m4", samples_per_case=1, **cfg))
    card = json.loads((tmp_path / "m4" / "model_card.json").read_text())
    base = json.loads((model_3d / "model_card.json").read_text())
    assert card["network"] == base["network"] and card["preprocessing"] == base["preprocessing"]
    assert card["training"]["options"]["init"] == "shapes3d" and result.folds[0].log[0]["epoch"] == 1


# ----------------------------------------------------------------------------- 2D, resume, folds
TWO_D = ("--features", "8", "16", "32", "--patch", "32", "--batch-size", "4", "--samples-per-case", "2",
         "--lr", "0.01", "--seed", "3")


@pytest.fixture(scope="module")
def data_2d(tmp_path_factory):
    data = tmp_path_factory.mktemp("train2d") / "xr"
    for n in range(5):
        write_pair(data, f"xr{n}", *disk_case(n), segments=(Segment("s", "Disk", (0.1, 0.8, 0.1), 1),))
    return data


def _weights(folder: Path) -> dict:
    return torch.load(str(folder / "model.pt"), map_location="cpu", weights_only=True)


def test_2d_learns_and_resume_gives_the_same_weights(data_2d, tmp_path):
    straight = tmp_path / "straight"
    assert main(run_args(data_2d, straight, "--epochs", "6", *TWO_D)) == 0
    card = json.loads((straight / "model_card.json").read_text())
    assert card["dims"] == 2 and card["preprocessing"]["orientation"] is None
    assert card["preprocessing"]["target_spacing_mm"] == [0.8, 0.7] and card["inference"]["roi_size"] == [32, 32]
    log = json.loads((straight / "training_log.json").read_text())["epochs"]
    assert log[-1]["val_dice"]["Disk"] >= DICE_2D, log[-1]

    # interrupted during epoch 4 (epochs 1-3 complete), then resumed
    cut = tmp_path / "cut"
    token = CancelToken()

    def stop_in_epoch_4(fraction: float, message: str) -> None:
        if message.startswith("ep 4/6"):
            token.cancel("test interruption")

    cfg = TrainConfig(data_2d, cut, "CC0-1.0", features=(8, 16, 32), patch=(32,), batch_size=4, samples_per_case=2,
                      lr=0.01, seed=3, epochs=6, device="cpu")
    with pytest.raises(CancelledError):
        train(cfg, progress=stop_in_epoch_4, cancel=token)
    assert not (cut / "model_card.json").exists()
    assert [e["epoch"] for e in json.loads((cut / "training_log.json").read_text())["epochs"]] == [1, 2, 3]
    with pytest.raises(InputError, match="exists and is not an empty folder"):
        train(cfg)
    with pytest.raises(InputError, match=r"other options \(lr: 0.01 then, 0.02 now"):
        train(TrainConfig(**{**cfg.__dict__, "lr": 0.02, "resume": True}))
    train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    a, b = _weights(straight), _weights(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    resumed = json.loads((cut / "training_log.json").read_text())["epochs"]
    assert [e["loss"] for e in resumed] == [e["loss"] for e in log]

    # the 2D model segments a new one-slice image through the model path
    from medseg.models.registry import open_model
    from medseg.pipeline.model_tasks import run_model

    vol, truth = disk_case(77)
    got = run_model(open_model(straight), [vol], device="cpu").labelmap
    assert got is not None and got.volume.same_grid(vol)
    assert dice(got.array == 1, truth == 1) >= DICE_2D


def test_folds_write_one_model_per_fold_and_a_summary(data_2d, tmp_path):
    out = tmp_path / "cv"
    assert main(run_args(data_2d, out, "--epochs", "1", "--folds", "2", *TWO_D)) == 0
    summary = json.loads((out / "cross_validation.json").read_text())
    assert [f["folder"] for f in summary["folds"]] == ["cv-fold0", "cv-fold1"]
    val = sorted(c for f in summary["folds"] for c in f["validation_cases"])
    assert val == [f"xr{n}" for n in range(5)]
    for f in summary["folds"]:
        card = json.loads((out / f["folder"] / "model_card.json").read_text())
        assert card["name"] == f["folder"] and card["training"]["validation"]["dice_mean"] == f["dice_mean"]
    means = [f["dice_mean"] for f in summary["folds"]]
    assert summary["dice_mean"] == pytest.approx(float(np.mean(means)))


# ----------------------------------------------------------------------------- PNG masks with grey levels
AA_SHAPE = (36, 52)  # rows, columns: non-square, so a transposed mask cannot pass


def anti_aliased_pair(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An 8-bit picture (rows x columns) with a bright ellipse, and its anti-aliased mask: each pixel's grey
    value is 255 x the share of its 4 x 4 sub-pixels inside the ellipse (0, 15, 31, ..., 255), as drawing
    programs and downsampled masks have. Pixel (0, 0) is 127 and (0, 1) is 128, the values either side
    of the threshold 127."""
    rng = np.random.default_rng(seed)
    rows, cols = AA_SHAPE
    cy, cx = rng.uniform(14, 22), rng.uniform(20, 32)
    ry, rx = rng.uniform(7, 10), rng.uniform(10, 15)
    sub = (np.arange(4) + 0.5) / 4
    y = (np.arange(rows)[:, None] + sub[None, :]).reshape(-1)
    x = (np.arange(cols)[:, None] + sub[None, :]).reshape(-1)
    inside = ((y[:, None] - cy) / ry) ** 2 + ((x[None, :] - cx) / rx) ** 2 <= 1.0
    share = inside.reshape(rows, 4, cols, 4).mean(axis=(1, 3))
    mask = np.round(255 * share).astype(np.uint8)
    mask[0, 0], mask[0, 1] = 127, 128
    image = np.clip(rng.normal(60, 12, (rows, cols)) + 120 * share, 0, 255).astype(np.uint8)
    return image, mask


@pytest.fixture(scope="module")
def anti_aliased_pngs(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """Four PNG pairs ``aa<n>.png`` / ``aa<n>_mask.png`` in one folder, and each case's mask grey values."""
    from PIL import Image

    data = tmp_path_factory.mktemp("anti_aliased") / "pngs"
    data.mkdir()
    masks = {}
    for n in range(4):
        image, mask = anti_aliased_pair(20 + n)
        Image.fromarray(image).save(data / f"aa{n}.png")
        Image.fromarray(mask).save(data / f"aa{n}_mask.png")
        masks[f"aa{n}"] = mask
    return data, masks


def test_anti_aliased_png_masks_read_above_the_threshold(anti_aliased_pngs):
    """Inside = grey value above T (127 itself is outside), pixel for pixel in row/column order; no T: refused,
    naming the mask and asking for a threshold."""
    data, masks = anti_aliased_pngs
    files = find_cases(data)
    assert [(c.name, c.label.name) for c in files] == [(f"aa{n}", f"aa{n}_mask.png") for n in range(4)]
    assert all(len(np.unique(m)) > 10 for m in masks.values())  # really anti-aliased, not 0/255
    with pytest.raises(InputError, match=r"case aa0: mask .*aa0_mask.* grey levels.*give a threshold"):
        load_cases(files)
    for threshold in (127.0, 200.0):
        cases, scheme = load_cases(files, {1: "Blob"}, mask_threshold=threshold)
        assert [(s.name, s.value, s.channel) for s in scheme.structures] == [("Blob", 1, 1)]
        for case in cases:
            want = (masks[case.name] > threshold).astype(np.uint8)
            assert case.image.shape_kji == (1, *AA_SHAPE) and case.channels.shape == (1, *AA_SHAPE)
            np.testing.assert_array_equal(case.channels[0], want)
            np.testing.assert_array_equal(case.values[0], want)
    cases, _ = load_cases(files, mask_threshold=127)
    assert cases[0].channels[0, 0, 0] == 0 and cases[0].channels[0, 0, 1] == 1


def test_train_command_takes_a_mask_threshold(anti_aliased_pngs, tmp_path, capsys):
    data, _masks = anti_aliased_pngs
    tiny = ("--features", "4", "8", "--patch", "16", "--samples-per-case", "1", "--batch-size", "2",
            "--labels", "1=Blob", "--seed", "2")
    assert main(run_args(data, tmp_path / "refused", "--epochs", "1", *tiny)) == 2
    err = capsys.readouterr().err
    assert "aa0_mask.png" in err and "threshold" in err
    with pytest.raises(SystemExit) as exc:  # checked by the argument parser
        main(run_args(data, tmp_path / "nan", "--mask-threshold", "nan", *tiny))
    assert exc.value.code == 2 and "expected a finite grey value, got nan" in capsys.readouterr().err
    out = tmp_path / "blob"
    assert main(run_args(data, out, "--epochs", "1", "--mask-threshold", "127", *tiny)) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["dims"] == 2 and [(lab["name"], lab["value"]) for lab in card["labels"]] == [("Blob", 1)]
    # the threshold decides the labels, hence the weights: a resumed run must use the same one
    assert main(run_args(data, out, "--epochs", "2", "--mask-threshold", "100", "--resume", *tiny)) == 2
    assert "mask_threshold: 127.0 then, 100.0 now" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real chest X-rays
SHENZHEN = [f"CHNCXR_000{n}_0" for n in range(1, 7)]
#: lung Dice (both lungs as one structure) on the two held-out Shenzhen films after the short CPU run below
#: (UNet 8-16-32-64, 4 file pixels per working pixel, 30 epochs, about 25 s on 2 CPU cores): measured 0.947 and
#: 0.912 (CHNCXR_0003_0, CHNCXR_0004_0) in the validation; the bar is issue 13's "modest bar", set with room
#: for other platforms (the weights are exactly reproducible on one CPU build only)
CXR_DICE_BAR = 0.85


@pytest.mark.slow
def test_unet_learns_lungs_on_shenzhen_films(shared_data, tmp_path):
    """A tiny 2D U-Net trained on 4 real chest X-rays (anti-aliased masks, threshold 127) segments the lungs of
    the 2 films it never trained on, in the validation and again through ``medseg run --model``."""
    d = shared_data / "cxr_shenzhen"
    missing = [c for c in SHENZHEN if not (d / f"{c}.png").is_file() or not (d / f"{c}_mask.png").is_file()]
    if missing:
        pytest.fail(f"Shenzhen films missing in {d}: {missing}")
    table = tmp_path / "films.csv"
    table.write_text("case,image,label\n" + "".join(f"{c},{d / c}.png,{d / c}_mask.png\n" for c in SHENZHEN))
    out = tmp_path / "lungs"
    assert main(run_args(table, out, "--mask-threshold", "127", "--labels", "1=Lungs", "--val-fraction", "0.34",
                         "--spacing", "4", "4", "--features", "8", "16", "32", "64", "--epochs", "30",
                         "--samples-per-case", "4", "--batch-size", "2", "--lr", "0.01", "--seed", "0")) == 0
    card = json.loads((out / "model_card.json").read_text())
    validation = card["training"]["validation"]
    held_out = validation["cases"]
    assert len(held_out) == 2 and card["training"]["data"]["train_cases"] == 4
    assert validation["dice"]["Lungs"] >= CXR_DICE_BAR, validation
    from medseg.io.segmentation_files import read_segmentation

    for case in held_out:
        run_out = tmp_path / f"run_{case}"
        assert main(["-q", "run", str(d / f"{case}.png"), "--model", str(out), "--out", str(run_out),
                     "--no-models", "--no-html", "--device", "cpu"]) == 0
        pred = read_segmentation(run_out / "segmentation.seg.nrrd")
        ref = read_segmentation(d / f"{case}_mask.png", 127)
        assert pred.volume.same_grid(ref.volume) and pred.array.shape == ref.array.shape
        assert dice(pred.array == 1, ref.array == 1) >= CXR_DICE_BAR, case


def test_a_dicom_series_with_its_seg_or_rtstruct_is_a_training_pair(tmp_path):
    """A table row may pair a DICOM series folder with a DICOM SEG (or RTSTRUCT) made on it: the label is
    read onto the series' grid, with the SEG's segment names."""
    from conftest import grid_centre_ras, make_sitk_image, sphere_image
    from dicom_fixtures import write_ct_series
    from medseg.io.dicom_seg import write_dicom_seg
    from medseg.io.dicom_series import dicom_source_files
    from medseg.io.rtstruct import write_rtstruct
    from medseg.io.segmentation_files import read_segmentation
    from medseg.io.volume_reader import read_volume

    img = make_sitk_image("oblique_aniso_flipped")
    write_ct_series(sphere_image("oblique_aniso_flipped", grid_centre_ras(img), 9.0, inside=60, outside=-900),
                    tmp_path / "ct")
    series = read_volume(tmp_path / "ct")
    ball = (series.array > 0).astype(np.uint8) * 5
    labels = LabelMap(series.with_array(ball), (Segment("Segment_1", "Tumour", (0.9, 0.2, 0.2), 5),))
    write_dicom_seg(labels, dicom_source_files(series), tmp_path / "seg.dcm")
    write_rtstruct(labels, dicom_source_files(series), tmp_path / "rt.dcm")
    (tmp_path / "t.csv").write_text("case,image,label\nseg,ct,seg.dcm\nrt,ct,rt.dcm\n")
    cases, scheme = load_cases(find_cases(tmp_path / "t.csv"))
    assert [s.name for s in scheme.structures] == ["Tumour"]
    for case in cases:  # the SEG and the RTSTRUCT both give the ball, on the series' grid, as channel 1
        assert case.channels.shape == ball.shape
        assert np.count_nonzero(case.channels == 1) == pytest.approx(np.count_nonzero(ball), rel=0.05)
    seg = read_segmentation(tmp_path / "seg.dcm", reference=series)
    assert np.array_equal(seg.array > 0, ball > 0)  # a SEG on its own series: voxel for voxel
    with pytest.raises(InputError, match="give that series"):
        read_segmentation(tmp_path / "seg.dcm")
