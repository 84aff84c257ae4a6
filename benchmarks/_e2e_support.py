"""The machinery of ``benchmarks/bench_end_to_end.py``: the input, the trained model, the two pipelines,
per-stage memory, and the check that both give the same answer.

The two sides do the same work on the same CT file with the same network and weights:

* **MedSeg**: what ``medseg run INPUT --model DIR --out OUT --no-html`` does, in-process:
  :func:`medseg.io.volume_reader.read_volume` -> :func:`medseg.pipeline.run.run_task` (preprocess,
  segment, map back, detect, surfaces, measure) -> :func:`medseg.pipeline.output.write_result`
  (``segmentation.seg.nrrd``, ``models/*.stl``, ``report.json``); the HTML report is timed apart.
* **MONAI**, a bundle-style pipeline built from the model card: ``LoadImaged`` ->
  ``EnsureChannelFirstd`` (-> ``EnsureTyped`` onto the GPU on CUDA) -> ``Orientationd`` (when the card
  reorients; it needs nibabel) ->
  ``Spacingd`` (bilinear, border) -> ``ScaleIntensityRanged`` -> ``SlidingWindowInferer`` (same ROI,
  overlap, Gaussian weights, zero padding; softmax per window) -> ``Invertd`` back to the input grid ->
  ``AsDiscreted(argmax)`` -> channel -> label value -> ``SaveImaged``; then, as Slicer's closed-surface
  conversion does, per label: crop to its box padded by one voxel, ``vtkDiscreteFlyingEdges3D``,
  ``vtkWindowedSincPolyDataFilter`` (20 iterations, pass band ``10 ** (-4 * 0.5)``), IJK -> RAS,
  normals, and an STL in LPS; per-label volume, centroid and mesh area/volume into a JSON file.

Conventions that must agree for the labels to agree (each is MONAI's own option, set to the card's
meaning):

* working grid: MedSeg keeps the outer edge of voxel 0 and sizes the grid ``round(n * s_in / s_out)``;
  MONAI's ``Spacingd`` does nearly the same with ``scale_extent=True`` (its default keeps the *centre*
  of voxel 0 and would shift the working grid by ``(s_out - s_in) / 2``: 1.15 mm for 0.7 -> 3 mm). It
  places voxel 0 from the size ratio ``n_in / n_out`` rather than the spacing ratio, so where the size
  was rounded the two origins differ slightly (0.006 mm for 512 x 0.7 mm -> 119 x 3 mm); the benchmark
  prints both grids;
* blending: MedSeg blends per-window *probabilities* (softmax per window, then the Gaussian-weighted
  average); a MONAI bundle usually blends logits and applies softmax after. Where overlapping windows
  disagree these give different labels (a random network: 0.5 difference in probability), so the
  MONAI side wraps the network in a per-window softmax (``blend_logits=True`` gives the bundle order);
* map back: the card's ``map_back: probabilities`` is the MONAI bundle order (softmax, ``Invertd``
  with linear interpolation of each channel, then argmax); ``nearest-labels`` is argmax on the
  working grid, then ``Invertd`` with nearest neighbour;
* edges: both clamp to the edge voxel (MONAI ``padding_mode="border"``).

Everything here runs on CPU or CUDA; the benchmark script starts each side in a fresh process so
the peaks of memory do not mix.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import resource
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.core.errors import InputError

#: the benchmark's network: the MONAI spleen bundle's UNet layout (16-32-64-128-256, strides 2, two residual
#: units; instance norm, MONAI's default, where the bundle has batch norm), four output channels (background,
#: body, lungs, bones)
UNET_ARGS: dict[str, Any] = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4,
                             "channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2}
#: CT intensity range mapped to 0..1 (HU), clipped
CT_RANGE = (-1000.0, 1000.0)
#: (label value, output channel, name, RGB colour) of the benchmark model
BENCH_LABELS = ((1, 1, "Body", (0.69, 0.48, 0.40)), (2, 2, "Lungs", (0.77, 0.86, 0.98)),
                (3, 3, "Bones", (0.95, 0.84, 0.57)))
#: name -> (shape KJI, spacing mm i, j, k) of the input phantom; both cover the same 358 x 358 x 300 mm
SIZES: dict[str, tuple[tuple[int, int, int], tuple[float, float, float]]] = {
    "small": ((100, 128, 128), (2.8, 2.8, 3.0)),
    "full": ((300, 512, 512), (0.7, 0.7, 1.0)),
}
#: the phantom's noise seed of the benchmark input; the model is trained on another seed
INPUT_SEED, TRAIN_SEED = 1, 2
#: stage names of ``medseg run`` (``report.json`` ``timings_s`` keys), in order
STAGE_ORDER = ("read", "preprocess", "segment", "map_back", "detect", "surfaces", "measure", "write",
               "report_html")
#: the stages the progress callback of ``run_task`` announces by name
_RUN_STAGES = frozenset(STAGE_ORDER[1:7])
#: Slicer's closed-surface smoothing factor (MedSeg's default ``--smoothing``)
SMOOTHING = 0.5
MIB = 2**20


# ------------------------------------------------------------------------------ memory
def peak_rss_bytes() -> int:
    """This process's peak resident set so far, bytes.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this program's own memory map.
    (``getrusage`` ``ru_maxrss`` is not used there: after fork + exec it keeps the parent's resident size at
    the fork, so a child started by a big parent would report the parent's peak.) Elsewhere ``ru_maxrss``
    (bytes on macOS, kB otherwise)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if os.uname().sysname == "Darwin" else int(r) * 1024


class StageMonitor:
    """Peak memory of this process per named stage.

    RSS is sampled by a thread every ``interval_s`` seconds and the peak is kept per stage (a stage's
    peak includes what earlier stages left allocated). On CUDA, torch's ``max_memory_allocated`` is
    read and reset at each stage change. Stages are switched with :meth:`stage`, or by
    :meth:`progress` when a ``run_task`` progress message is a stage name.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.01) -> None:
        import psutil

        self._proc = psutil.Process(os.getpid())
        self.device = torch.device(device)
        self.current = "setup"
        self.rss_peaks: dict[str, int] = {}
        self.cuda_peaks: dict[str, int] = {}
        self._interval = float(interval_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        rss = int(self._proc.memory_info().rss)
        name = self.current
        if rss > self.rss_peaks.get(name, 0):
            self.rss_peaks[name] = rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def _close_cuda(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peaks[self.current] = int(torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)

    def stage(self, name: str) -> None:
        """Start stage ``name`` (closes the current one)."""
        self._sample()
        self._close_cuda()
        self.current = name
        self._sample()

    def progress(self, fraction: float, message: str) -> None:
        """A ``run_task`` progress callback: a message that names a stage starts it."""
        if message in _RUN_STAGES and message != self.current:
            self.stage(message)

    def close(self) -> None:
        """Stop sampling (closes the current stage)."""
        self.stage("done")
        self._stop.set()
        self._thread.join()


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so wall times are complete."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------ input and model
def phantom_input(cache: Path, size: str, log: Callable[[str], None] = print) -> Path:
    """The benchmark input: the chest phantom of ``SIZES[size]`` (seed ``INPUT_SEED``) as a raw int16 NRRD
    (LPS header, as ``medseg`` writes volumes) in ``cache``; made once, then reused."""
    if size not in SIZES:
        raise InputError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    from medseg.data.phantom import make_chest_phantom
    from medseg.io.volume_writer import write_volume_nrrd

    shape, spacing = SIZES[size]
    path = Path(cache) / f"chest_phantom_{'x'.join(map(str, shape))}_seed{INPUT_SEED}.nrrd"
    if path.is_file() and lesions_path(path).is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    log(f"making the {size} phantom {shape} (KJI) at {spacing} mm -> {path} (once; cached)")
    t = time.perf_counter()
    vol, truth = make_chest_phantom(shape_kji=shape, spacing_mm=spacing, seed=INPUT_SEED, name="ct")
    write_volume_nrrd(vol, path, compress=False)
    lesions = []
    for s in truth.lung_lesions:
        idx = np.argwhere(truth.labels == s.label_value)
        lesions.append({"name": s.name, "kind": s.kind,
                        "centroid_ras": vol.ijk_to_ras_points(idx[:, ::-1].astype(np.float64)).mean(axis=0).tolist(),
                        "diameter_mm": float((6 * len(idx) * vol.voxel_volume_mm3 / np.pi) ** (1 / 3))})
    lesions_path(path).write_text(json.dumps(lesions, indent=1) + "\n", encoding="utf-8")
    log(f"  phantom made and written in {time.perf_counter() - t:.1f} s")
    return path


def lesions_path(input_path: Path) -> Path:
    """The phantom input's lung lesions (name, kind, RAS centroid, equivalent diameter in mm), written beside
    it by :func:`phantom_input`."""
    return input_path.with_name(input_path.stem + "_lesions.json")


def lesions_found(report_json: Path, truth: Sequence[Mapping[str, Any]], min_hit_radius_mm: float
                  ) -> tuple[list[str], list[str], int]:
    """(names of the truth lesions found, names missed, count of lesion segments matching none) of a run's
    ``report.json``: a lesion is found when a lesion segment's centroid lies within its radius (at least
    ``min_hit_radius_mm``) of its centroid, as ``eval_detection.py`` matches."""
    segments = [s for s in json.loads(Path(report_json).read_text(encoding="utf-8"))["segments"] if s.get("is_lesion")]
    centres = [np.asarray(s["centroid_ras"], dtype=np.float64) for s in segments]
    found, missed, used = [], [], set()
    for t in truth:
        c, r = np.asarray(t["centroid_ras"], dtype=np.float64), max(t["diameter_mm"] / 2, min_hit_radius_mm)
        hits = [n for n, x in enumerate(centres) if np.linalg.norm(x - c) <= r]
        (found if hits else missed).append(f"{t['name']} ({t['diameter_mm']:.0f} mm)")
        used.update(hits)
    return found, missed, len(centres) - len(used)


def make_card(
    name: str,
    network_args: Mapping[str, Any],
    labels: Sequence[tuple[int, int, str, tuple[float, float, float]]],
    spacing_mm: Sequence[float],
    roi_size: Sequence[int],
    *,
    ct_range: tuple[float, float] = CT_RANGE,
    orientation: str | None = None,
    overlap: float = 0.5,
    map_back: str = "probabilities",
) -> dict:
    """A MedSeg model card (dict) for a MONAI ``UNet`` on one CT input: reorientation to ``orientation``
    (e.g. ``"RAS"``; None keeps the input's axes), resampling to ``spacing_mm`` (i, j, k after
    reorientation), ``scale-range`` normalisation of ``ct_range`` HU to
    0..1 (clipped), sliding window ``roi_size`` (voxels, i j k) with Gaussian blending, softmax.
    ``labels``: (value, output channel, name, RGB 0..1) per structure."""
    return {
        "schema": "medseg-model-card/1", "name": name, "dims": 3,
        "description": "MONAI UNet trained for a few steps on MedSeg's chest phantom (benchmark model)",
        "network": {"class": "UNet", "args": dict(network_args)}, "array_axes": "ijk",
        "inputs": [{"name": "ct", "modality": "CT"}],
        "preprocessing": {"orientation": orientation, "target_spacing_mm": [float(s) for s in spacing_mm],
                          "normalization": {"kind": "scale-range", "a_min": float(ct_range[0]),
                                            "a_max": float(ct_range[1]), "b_min": 0.0, "b_max": 1.0,
                                            "clip": True}},
        "inference": {"roi_size": [int(r) for r in roi_size], "overlap": float(overlap), "blend": "gaussian",
                      "sigma_scale": 0.125, "activation": "softmax", "map_back": map_back},
        "labels": [{"value": int(v), "channel": int(c), "name": n, "color": list(rgb)} for v, c, n, rgb in labels],
        "licence": {"name": "CC0-1.0", "commercial_use": True},
    }


def _target_labels(truth_labels: np.ndarray) -> np.ndarray:
    """The benchmark model's classes from the phantom truth: 0 air, 1 body (everything else inside),
    2 lungs (lungs and their vessels), 3 bones."""
    from medseg.data import phantom as ph

    out = (truth_labels > 0).astype(np.int64)
    out[np.isin(truth_labels, [ph.RIGHT_LUNG, ph.LEFT_LUNG, ph.RIGHT_VESSELS, ph.LEFT_VESSELS])] = 2
    out[truth_labels == ph.BONE] = 3
    return out


def train_phantom_model(
    cache: Path,
    *,
    spacing_mm: float = 3.0,
    steps: int = 60,
    patch: int = 64,
    roi: int = 96,
    threads: int | None = None,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> Path:
    """A model folder (``model_card.json`` + ``model.pt``, what ``medseg run --model DIR`` takes) holding
    :data:`UNET_ARGS` trained for ``steps`` Adam steps (Dice + cross-entropy, ``patch``^3 random crops,
    batch 2) on a 1.5 mm chest phantom (seed ``TRAIN_SEED``) brought to the card's working grid by
    MedSeg's own preprocessing, with the truth mapped by nearest neighbour, on ``device``. Cached in
    ``cache`` under a key of the settings (not of the device or thread count, which change the weights
    in their last bits only).
    Training is not part of any timing."""
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    from medseg.core.volume import Volume
    from medseg.data.phantom import make_chest_phantom
    from medseg.models.authoring import save_model_folder
    from medseg.models.card import parse_card
    from medseg.preprocess.pipeline import preprocess
    from medseg.preprocess.resample import resample_to_grid

    card = make_card("bench-phantom-unet", UNET_ARGS, BENCH_LABELS, (spacing_mm,) * 3, (roi,) * 3)
    key_src = json.dumps({"card": card, "steps": steps, "patch": patch, "seed": TRAIN_SEED, "v": 1}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    folder = Path(cache) / f"model-{key}"
    if (folder / "model_card.json").is_file() and (folder / "model.pt").is_file():
        return folder
    log(f"training the benchmark UNet for {steps} steps at {spacing_mm} mm -> {folder} (once; cached)")
    t0 = time.perf_counter()
    if threads:
        torch.set_num_threads(int(threads))
    vol, truth = make_chest_phantom((200, 239, 239), (1.5, 1.5, 1.5), seed=TRAIN_SEED, name="train")
    spec = parse_card({**card, "weights": {"file": "model.pt", "sha256": "0" * 64}}).preprocess_spec()
    prep = preprocess([vol], spec, device="cpu")
    work = prep.volumes[0]
    lab = resample_to_grid(Volume(_target_labels(truth.labels).astype(np.uint8), vol.ijk_to_ras), work,
                           mode="nearest", fill=None).array
    dev = torch.device(device)
    x = torch.from_numpy(np.ascontiguousarray(work.array.transpose(2, 1, 0)))[None].to(dev)  # (1, I, J, K)
    y = torch.from_numpy(np.ascontiguousarray(lab.transpose(2, 1, 0)).astype(np.int64))[None].to(dev)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = UNet(**UNET_ARGS).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    shape = np.array(x.shape[1:])
    p = np.minimum(patch, shape)
    p = (p // 16) * 16  # the UNet halves four times
    net.train()
    loss = torch.zeros(())
    for step in range(steps):
        xs, ys = [], []
        for _ in range(2):
            lo = [int(rng.integers(0, max(int(s - q), 0) + 1)) for s, q in zip(shape, p, strict=True)]
            si, sj, sk = (slice(a, a + int(q)) for a, q in zip(lo, p, strict=True))
            xs.append(x[:, si, sj, sk])
            ys.append(y[:, si, sj, sk])
        opt.zero_grad()
        loss = loss_fn(net(torch.stack(xs)), torch.stack(ys))
        loss.backward()
        opt.step()
        if step % 10 == 0 or step == steps - 1:
            log(f"  step {step + 1}/{steps}: loss {float(loss.detach()):.3f}")
    net.eval()
    with torch.inference_mode():
        from monai.inferers import sliding_window_inference

        logits = sliding_window_inference(x[None], (roi,) * 3, 4, net, overlap=0.5, mode="gaussian")
        assert isinstance(logits, torch.Tensor)
        pred = logits.argmax(1)[0]
    fit = []
    for c in range(1, 4):
        a, b = pred == c, y[0] == c
        fit.append(f"class {c}: Dice {2.0 * float((a & b).sum()) / max(float(a.sum() + b.sum()), 1.0):.3f}, "
                   f"{float(a.float().mean()):.1%} of the grid (truth {float(b.float().mean()):.1%})")
    save_model_folder(folder, card, net.cpu())
    log(f"  trained in {time.perf_counter() - t0:.0f} s (final loss {float(loss.detach()):.3f}); on its training "
        f"grid: {'; '.join(fit)}")
    return folder


# ------------------------------------------------------------------------------ MedSeg side
@dataclass
class SideResult:
    """What one side reports (JSON-ready).

    Attributes:
        side: "medseg", "monai" or "classical".
        stages_s: seconds per stage (MedSeg: ``report.json`` ``timings_s``).
        wall_s: read -> last file written, as one wall time (HTML not included).
        html_s: the HTML report's own time (MedSeg; None when not written).
        peak_rss_mb: the process's peak RSS (MiB) up to the end of the compared work (HTML not included).
        peak_rss_html_mb: the peak including the HTML report.
        stage_rss_mb: sampled peak RSS per stage (MiB).
        stage_cuda_mb: CUDA ``max_memory_allocated`` per stage (MiB), on CUDA.
        cuda_peak_mb: CUDA peak over the whole run (MiB), on CUDA.
        labels_file: the label map written (relative to ``out_dir``).
        meshes: label value -> mesh file (relative to ``out_dir``).
        work_grid: the network's working grid: ``shape_ijk``, ``origin_ras`` (mm, centre of voxel 0),
            ``spacing_mm`` (empty when not known, e.g. a classical task).
        notes: settings that matter for the comparison (plan, writer, batch, ...).
    """

    side: str
    out_dir: str
    device: str
    threads: int
    stages_s: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    html_s: float | None = None
    peak_rss_mb: float = 0.0
    peak_rss_html_mb: float | None = None
    stage_rss_mb: dict[str, float] = field(default_factory=dict)
    stage_cuda_mb: dict[str, float] = field(default_factory=dict)
    cuda_peak_mb: float | None = None
    import_s: float = 0.0
    labels_file: str = ""
    meshes: dict[str, str] = field(default_factory=dict)
    work_grid: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _finish_monitor(res: SideResult, mon: StageMonitor) -> None:
    mon.close()
    res.stage_rss_mb = {k: v / MIB for k, v in mon.rss_peaks.items() if k not in ("setup", "done")}
    if mon.device.type == "cuda":
        res.stage_cuda_mb = {k: v / MIB for k, v in mon.cuda_peaks.items() if k not in ("setup", "done")}
        res.cuda_peak_mb = max(res.stage_cuda_mb.values(), default=0.0)


def run_medseg_case(
    input_path: Path,
    out_dir: Path,
    *,
    model_dir: Path | None = None,
    task_name: str | None = None,
    device: str = "cpu",
    html: bool = False,
    network: torch.nn.Module | None = None,
) -> SideResult:
    """Run ``medseg run INPUT --model DIR`` (or ``--task TASK``) in this process with the default outputs
    (segmentation, STL models, report.json) into ``out_dir`` (must not exist); with ``html`` the HTML
    report is written afterwards into the same folder and timed apart. ``network`` replaces the card's
    (tests). Stage times are the result's ``timings`` (``report.json`` ``timings_s``)."""
    import logging

    from medseg.io.volume_reader import read_volume
    from medseg.pipeline.model_tasks import model_task
    from medseg.pipeline.options import RunOptions
    from medseg.pipeline.output import write_result
    from medseg.pipeline.run import run_task
    from medseg.pipeline.tasks import get_task
    from medseg.report import write_report_html

    if (model_dir is None) == (task_name is None):
        raise InputError("give exactly one of model_dir and task_name")
    dev = torch.device(device)
    res = SideResult("medseg" if model_dir is not None else "classical", str(out_dir), str(dev),
                     torch.get_num_threads())
    plans: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: plans.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("medseg")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    mon = StageMonitor(dev)
    try:
        sync(dev)
        t0 = time.perf_counter()
        task = model_task(model_dir, network) if model_dir is not None else get_task(str(task_name))
        options = RunOptions(task=task.name, device=str(dev))
        options.validate(task)
        mon.stage("read")
        warnings: list[str] = []
        t = time.perf_counter()
        vol = read_volume(Path(input_path), warnings=warnings)
        read_s = time.perf_counter() - t
        result = run_task([vol], options, task=task, progress=mon.progress, notes=warnings,
                          timings={"read": read_s})
        mon.stage("write")
        write_result(result, Path(out_dir), html=False)
        sync(dev)
        res.wall_s = time.perf_counter() - t0
        res.peak_rss_mb = peak_rss_bytes() / MIB
        if html:
            mon.stage("report_html")
            with open(Path(out_dir) / "report.json", encoding="utf-8") as fh:
                report = json.load(fh)
            t = time.perf_counter()
            write_report_html(result, report, Path(out_dir))
            res.html_s = time.perf_counter() - t
            res.peak_rss_html_mb = peak_rss_bytes() / MIB
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        _finish_monitor(res, mon)
    res.stages_s = {k: float(v) for k, v in result.timings.items() if k != "report_html"}
    if res.html_s is not None:
        res.stages_s["report_html"] = res.html_s
    res.labels_file = "segmentation.seg.nrrd"
    with open(Path(out_dir) / "report.json", encoding="utf-8") as fh:
        rep = json.load(fh)
    for seg in rep["segments"]:
        if seg.get("model_file"):
            res.meshes[str(seg["label_value"])] = seg["model_file"]
    res.notes += [m for m in plans if m.startswith("model ")]
    res.notes.append(f"device used: {result.device}")
    spec = getattr(task, "spec", None)
    spacing = getattr(spec, "target_spacing_mm", None)
    if spacing is not None and getattr(spec, "orientation", None) is None:
        from medseg.preprocess.resample import spacing_grid

        shape_kji, m = spacing_grid(vol, [float(x) for x in spacing])
        res.work_grid = _grid(tuple(shape_kji[::-1]), m)
    return res


def _grid(shape_ijk: Sequence[int], ijk_to_ras: np.ndarray) -> dict[str, list[float]]:
    return {"shape_ijk": [int(n) for n in shape_ijk], "origin_ras": [float(x) for x in ijk_to_ras[:3, 3]],
            "spacing_mm": [float(x) for x in np.linalg.norm(ijk_to_ras[:3, :3], axis=0)]}


# ------------------------------------------------------------------------------ MONAI side
@dataclass(frozen=True)
class MonaiSettings:
    """The MONAI pipeline's settings, read from a MedSeg model card (:func:`monai_settings`)."""

    network_class: str
    network_args: dict
    weights: Path
    orientation: str | None
    spacing_mm: tuple[float, ...] | None
    a_min: float
    a_max: float
    b_min: float
    b_max: float
    clip: bool
    roi_size: tuple[int, ...]
    overlap: float
    blend: str
    sigma_scale: float
    pad_value: float
    map_back: str
    channel_to_value: dict[int, int]


def monai_settings(model_dir: Path) -> MonaiSettings:
    """The MONAI pipeline's settings from the card in ``model_dir`` (``InputError`` for a card this
    benchmark's MONAI side cannot mirror: not one CT input, not 3D, not softmax, not scale-range)."""
    from medseg.core.vocabulary import NormalizationKind
    from medseg.models.card import load_card

    card = load_card(Path(model_dir))
    norm = card.input_normalization(0)
    if card.dims != 3 or len(card.inputs) != 1 or card.activation != "softmax" or card.array_axes != "ijk":
        raise InputError(f"the MONAI side mirrors 3D, one-input, softmax, ijk cards; {model_dir} is dims {card.dims}, "
                         f"{len(card.inputs)} inputs, {card.activation}, {card.array_axes}")
    if norm.kind != NormalizationKind.SCALE_RANGE:
        raise InputError(f"the MONAI side mirrors scale-range normalisation; the card has {norm.kind}")
    if card.keep_largest or card.fill_holes or card.min_size_mm3:
        raise InputError("the MONAI side has no post-processing; the card asks for some")
    return MonaiSettings(
        card.network_class, dict(card.network_args), Path(model_dir) / card.weights_file, card.orientation,
        card.target_spacing_mm, float(norm.a_min), float(norm.a_max), float(norm.b_min), float(norm.b_max),
        bool(norm.clip), tuple(card.roi_size), card.overlap, card.blend, card.sigma_scale, card.pad_value,
        card.map_back, {lab.channel: lab.value for lab in card.labels})


def _sitk_nrrd_writer_class() -> type:
    """A MONAI ``ImageWriter`` that writes through SimpleITK (gzip level 1, nibabel's default level):
    the stand-in for ``NibabelWriter`` when nibabel is not installed (MONAI's own writers need nibabel
    or itk)."""
    import SimpleITK as sitk
    from monai.data.image_writer import ImageWriter
    from monai.data.utils import to_affine_nd

    from medseg.core.frames import ras_to_lps_matrix

    class SitkNrrdWriter(ImageWriter):
        output_dtype: Any
        affine: Any

        def __init__(self, output_dtype: Any = np.float32, **kwargs: Any) -> None:
            super().__init__(output_dtype=output_dtype, affine=None, **kwargs)

        def set_data_array(self, data_array: Any, channel_dim: int | None = 0, squeeze_end_dims: bool = True,
                           **kwargs: Any) -> None:
            self.data_obj = self.convert_to_channel_last(data=data_array, channel_dim=channel_dim,
                                                         squeeze_end_dims=squeeze_end_dims,
                                                         spatial_ndim=kwargs.pop("spatial_ndim", 3))

        def set_metadata(self, meta_dict: Mapping | None, resample: bool = True, **options: Any) -> None:
            original_affine, affine, spatial_shape = self.get_meta_info(meta_dict)
            self.data_obj, self.affine = self.resample_if_needed(
                data_array=self.data_obj, affine=affine, target_affine=original_affine if resample else None,
                output_spatial_shape=spatial_shape if resample else None,
                mode=options.pop("mode", "bilinear"), padding_mode=options.pop("padding_mode", "border"),
                align_corners=options.pop("align_corners", False), dtype=options.pop("dtype", np.float64))

        def write(self, filename: Any, verbose: bool = False, **kwargs: Any) -> None:
            super().write(filename, verbose=verbose)
            arr = np.asarray(self.data_obj.cpu() if isinstance(self.data_obj, torch.Tensor) else self.data_obj)
            arr = arr.astype(self.output_dtype, copy=False)
            ras = to_affine_nd(3, np.asarray(self.affine, dtype=np.float64))
            lps = ras_to_lps_matrix(ras)
            img = sitk.GetImageFromArray(np.ascontiguousarray(arr.transpose(2, 1, 0)))  # IJK -> KJI
            spacing = np.linalg.norm(lps[:3, :3], axis=0)
            img.SetSpacing([float(s) for s in spacing])
            img.SetOrigin([float(o) for o in lps[:3, 3]])
            img.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
            sitk.WriteImage(img, str(filename), True, 1)

    return SitkNrrdWriter


def _slicer_surface(labels_kji: np.ndarray, value: int, box: tuple[slice, slice, slice], ijk_to_ras: np.ndarray,
                    smoothing: float = SMOOTHING) -> Any:
    """One label's closed surface as Slicer's binary-labelmap -> closed-surface rule makes it (RAS mm)."""
    import vtk
    from vtk.util import numpy_support as ns

    lo = [max(s.start - 1, 0) for s in box]
    crop = labels_kji[tuple(slice(a, s.stop + 1) for a, s in zip(lo, box, strict=True))]
    padded = np.zeros(tuple(n + 2 for n in crop.shape), dtype=np.uint8)
    padded[1:-1, 1:-1, 1:-1] = crop == value
    img = vtk.vtkImageData()
    img.SetDimensions(padded.shape[2], padded.shape[1], padded.shape[0])
    img.SetOrigin(lo[2] - 1.0, lo[1] - 1.0, lo[0] - 1.0)  # IJK of the padded corner
    img.GetPointData().SetScalars(ns.numpy_to_vtk(padded.ravel(), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR))
    fe = vtk.vtkDiscreteFlyingEdges3D()
    fe.SetInputData(img)
    fe.SetValue(0, 1)
    fe.ComputeNormalsOff()
    fe.ComputeGradientsOff()
    fe.ComputeScalarsOff()
    last: vtk.vtkAlgorithm = fe
    if smoothing > 0:
        sm = vtk.vtkWindowedSincPolyDataFilter()
        sm.SetInputConnection(fe.GetOutputPort())
        sm.SetNumberOfIterations(20)
        sm.SetPassBand(10.0 ** (-4.0 * smoothing))
        sm.BoundarySmoothingOff()
        sm.FeatureEdgeSmoothingOff()
        sm.SetFeatureAngle(120.0)
        sm.NonManifoldSmoothingOn()
        sm.NormalizeCoordinatesOn()
        last = sm
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(ijk_to_ras[r, c]))
    tf = vtk.vtkTransform()
    tf.SetMatrix(m)
    tp = vtk.vtkTransformFilter()
    tp.SetInputConnection(last.GetOutputPort())
    tp.SetTransform(tf)
    last = tp
    if np.linalg.det(ijk_to_ras[:3, :3]) < 0:  # a mirroring grid: keep normals pointing out
        rs = vtk.vtkReverseSense()
        rs.SetInputConnection(last.GetOutputPort())
        rs.ReverseCellsOn()
        last = rs
    nm = vtk.vtkPolyDataNormals()
    nm.SetInputConnection(last.GetOutputPort())
    nm.SplittingOff()
    nm.ConsistencyOn()
    nm.Update()
    return nm.GetOutput()


def _write_stl_lps(polydata_ras: Any, path: Path) -> None:
    """Binary STL with points in LPS (Slicer's file convention)."""
    import vtk

    tf = vtk.vtkTransform()
    tf.Scale(-1.0, -1.0, 1.0)
    tp = vtk.vtkTransformFilter()
    tp.SetInputData(polydata_ras)
    tp.SetTransform(tf)
    w = vtk.vtkSTLWriter()
    w.SetInputConnection(tp.GetOutputPort())
    w.SetFileName(str(path))
    w.SetFileTypeToBinary()
    if not w.Write():
        raise OSError(f"vtkSTLWriter could not write {path}")


def _mass(polydata: Any) -> tuple[float, float]:
    """(enclosed volume mm^3, surface area mm^2) of a closed triangle mesh."""
    import vtk

    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(polydata)
    mp = vtk.vtkMassProperties()
    mp.SetInputConnection(tri.GetOutputPort())
    mp.Update()
    return float(mp.GetVolume()), float(mp.GetSurfaceArea())


def run_monai_case(
    input_path: Path,
    out_dir: Path,
    model_dir: Path,
    *,
    device: str = "cpu",
    sw_batch_size: int = 4,
    blend_logits: bool = False,
    network: torch.nn.Module | None = None,
) -> SideResult:
    """The MONAI bundle-style pipeline (module doc) on ``input_path`` with the card and weights in
    ``model_dir``, into ``out_dir`` (created; must not exist): ``<name>_seg.nrrd|.nii.gz``,
    ``models/label_<value>.stl`` (LPS), ``measurements.json``. ``network`` replaces the card's (tests).

    The windows are blended as MedSeg blends them: softmax per window, then the Gaussian-weighted
    average of the probabilities. ``blend_logits`` uses a MONAI bundle's usual order instead (blend the
    logits, softmax after): a different answer wherever overlapping windows disagree."""
    import monai
    from monai.data import MetaTensor
    from monai.inferers import SlidingWindowInferer
    from monai.networks import nets
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        EnsureTyped,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )
    from scipy import ndimage

    s = monai_settings(model_dir)
    dev = torch.device(device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=False)
    res = SideResult("monai", str(out), str(dev), torch.get_num_threads())
    has_nibabel = importlib.util.find_spec("nibabel") is not None
    if s.orientation and not has_nibabel:
        raise InputError(f"the card reorients to {s.orientation}: MONAI's Orientationd needs nibabel, which is not "
                         "installed (pip install nibabel), or use a card without orientation")
    writer: Any = "NibabelWriter" if has_nibabel else _sitk_nrrd_writer_class()
    ext = ".nii.gz" if has_nibabel else ".nrrd"
    nearest = s.map_back == "nearest-labels"
    res.notes += [f"MONAI {monai.__version__}; SaveImaged writer {getattr(writer, '__name__', writer)} ({ext}); "
                  f"sw_batch_size {sw_batch_size}; windows blended as "
                  f"{'logits, softmax after (bundle order)' if blend_logits else 'probabilities (softmax per window)'}"
                  f"; map back: {s.map_back}"
                  f"{' (argmax, Invertd nearest)' if nearest else ' (softmax, Invertd linear, argmax)'}"]
    mon = StageMonitor(dev)
    try:
        sync(dev)
        t0 = time.perf_counter()
        mon.stage("read")
        t = time.perf_counter()
        loading: list = [LoadImaged("image", image_only=True), EnsureChannelFirstd("image")]
        if dev.type == "cuda":
            loading.append(EnsureTyped("image", device=dev, track_meta=True))
        d = Compose(loading)({"image": str(input_path)})
        sync(dev)
        res.stages_s["read"] = time.perf_counter() - t

        mon.stage("preprocess")
        t = time.perf_counter()
        steps: list = []
        if s.orientation:
            steps.append(Orientationd("image", axcodes=s.orientation))
        if s.spacing_mm:
            steps.append(Spacingd("image", pixdim=s.spacing_mm, mode="bilinear", padding_mode="border",
                                  scale_extent=True))
        steps.append(ScaleIntensityRanged("image", a_min=s.a_min, a_max=s.a_max, b_min=s.b_min, b_max=s.b_max,
                                          clip=s.clip))
        pre = Compose(steps)
        d = pre(d)
        sync(dev)
        res.stages_s["preprocess"] = time.perf_counter() - t
        work_affine = np.asarray(d["image"].affine.cpu(), dtype=np.float64)
        res.work_grid = _grid(tuple(d["image"].shape[1:]), work_affine)

        mon.stage("segment")
        t = time.perf_counter()
        if network is None:
            net = getattr(nets, s.network_class)(**s.network_args)
            net.load_state_dict(torch.load(s.weights, map_location="cpu", weights_only=True))
        else:
            net = network
        net = net.eval().to(dev)
        inferer = SlidingWindowInferer(roi_size=s.roi_size, sw_batch_size=sw_batch_size, overlap=s.overlap,
                                       mode=s.blend, sigma_scale=s.sigma_scale, padding_mode="constant",
                                       cval=s.pad_value)
        with torch.inference_mode(), torch.autocast("cuda", enabled=dev.type == "cuda"):
            if blend_logits:  # the MONAI bundle order: blend the logits, then softmax
                blended = inferer(d["image"].as_tensor()[None], net)
                assert isinstance(blended, torch.Tensor)
                probs = torch.softmax(blended.float(), dim=1)[0]
            else:  # MedSeg's order: softmax per window, then blend
                blended = inferer(d["image"].as_tensor()[None], lambda t: torch.softmax(net(t).float(), dim=1))
                assert isinstance(blended, torch.Tensor)
                probs = blended.float()[0]
            del blended
        sync(dev)
        res.stages_s["segment"] = time.perf_counter() - t

        mon.stage("map_back")
        t = time.perf_counter()
        # the prediction carries the image's metadata and transform trace, as after decollate_batch in a bundle
        pred = torch.argmax(probs, dim=0, keepdim=True).float() if nearest else probs
        del probs
        d["pred"] = MetaTensor(pred, meta=d["image"].meta, applied_operations=d["image"].applied_operations)
        del pred
        d = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=nearest)(d)
        if not nearest:
            d = AsDiscreted("pred", argmax=True)(d)
        lut = torch.zeros(max(s.channel_to_value) + 1, dtype=torch.uint8, device=d["pred"].device)
        for ch, val in s.channel_to_value.items():
            lut[ch] = val
        d["pred"] = MetaTensor(lut[d["pred"].as_tensor().round().long()], meta=d["pred"].meta)
        labels_ijk = d["pred"].as_tensor()[0].cpu().numpy()
        affine_ras = np.asarray(d["pred"].affine.cpu(), dtype=np.float64)  # IJK -> RAS of the input grid
        sync(dev)
        res.stages_s["map_back"] = time.perf_counter() - t

        mon.stage("surfaces")
        t = time.perf_counter()
        labels_kji = labels_ijk.transpose(2, 1, 0)  # a view: VTK images are x-fastest, like KJI C order
        boxes = ndimage.find_objects(labels_kji)
        values = [v for v in sorted(s.channel_to_value.values()) if v <= len(boxes) and boxes[v - 1] is not None]
        meshes = {v: _slicer_surface(labels_kji, v, boxes[v - 1], affine_ras) for v in values}
        res.stages_s["surfaces"] = time.perf_counter() - t

        mon.stage("measure")
        t = time.perf_counter()
        vox_mm3 = float(abs(np.linalg.det(affine_ras[:3, :3])))
        measurements = {}
        for v in values:
            box = boxes[v - 1]
            mask = labels_kji[box] == v
            n = int(np.count_nonzero(mask))
            kji = np.array([idx.mean() + sl.start for idx, sl in zip(np.nonzero(mask), box, strict=True)])
            centroid = affine_ras @ np.array([kji[2], kji[1], kji[0], 1.0])
            mesh_volume, area = _mass(meshes[v])
            measurements[str(v)] = {"voxel_count": n, "volume_ml": n * vox_mm3 / 1000.0,
                                    "centroid_ras": [float(c) for c in centroid[:3]],
                                    "mesh_volume_ml": mesh_volume / 1000.0, "surface_area_mm2": area}
        res.stages_s["measure"] = time.perf_counter() - t

        mon.stage("write")
        t = time.perf_counter()
        SaveImaged("pred", output_dir=str(out), output_postfix="seg", output_ext=ext, output_dtype=np.uint8,
                   resample=False, separate_folder=False, writer=writer, print_log=False)(d)
        (out / "models").mkdir()
        for v, pd in meshes.items():
            _write_stl_lps(pd, out / "models" / f"label_{v}.stl")
            res.meshes[str(v)] = f"models/label_{v}.stl"
        (out / "measurements.json").write_text(json.dumps(measurements, indent=1) + "\n", encoding="utf-8")
        sync(dev)
        res.stages_s["write"] = time.perf_counter() - t
        res.wall_s = time.perf_counter() - t0
        res.peak_rss_mb = peak_rss_bytes() / MIB
    finally:
        _finish_monitor(res, mon)
    written = sorted(p.name for p in out.iterdir() if p.name.endswith("_seg" + ext))
    if len(written) != 1:
        raise InputError(f"expected one label file *_seg{ext} in {out}, found {written}")
    res.labels_file = written[0]
    return res


# ------------------------------------------------------------------------------ the check
def read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(label array KJI, IJK->RAS 4x4) of a label file: a ``.seg.nrrd`` through MedSeg's reader, anything
    else through SimpleITK (LPS -> RAS by :mod:`medseg.core.frames`)."""
    import SimpleITK as sitk

    from medseg.core.frames import sitk_to_volume
    from medseg.io.seg_nrrd import read_seg_nrrd

    seg = str(path).endswith(".seg.nrrd")
    vol = read_seg_nrrd(path).volume if seg else sitk_to_volume(sitk.ReadImage(str(path)))
    return vol.array, vol.ijk_to_ras


def mesh_volume_ml(path: Path) -> float:
    """Enclosed volume (mL) of the closed mesh in an STL file."""
    import vtk

    r = vtk.vtkSTLReader()
    r.SetFileName(str(path))
    r.Update()
    return abs(_mass(r.GetOutput())[0]) / 1000.0


@dataclass
class Comparison:
    """Labels and meshes of two sides compared (see :func:`compare_outputs`)."""

    same_grid: bool
    dice: dict[int, float]
    voxels: dict[int, tuple[int, int]]
    agreement: float
    differing_voxels: int
    confusion: dict[tuple[int, int], int]
    mesh_ml: dict[int, tuple[float, float]]
    voxel_mm3: float = 0.0
    min_dice: float = 0.99
    max_mesh_rel: float = 0.02
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_outputs(a: SideResult, b: SideResult, *, min_dice: float = 0.99, max_mesh_rel: float = 0.02) -> Comparison:
    """Compare side ``a`` (MedSeg) with ``b`` (MONAI): same grid (shape and IJK->RAS within 1e-4 mm),
    Dice per label value >= ``min_dice``, voxel agreement, which label pairs differ, and the enclosed
    volume of each label's mesh within ``max_mesh_rel`` (relative to ``a``'s)."""
    la, ma = read_labels(Path(a.out_dir) / a.labels_file)
    lb, mb = read_labels(Path(b.out_dir) / b.labels_file)
    problems: list[str] = []
    same = la.shape == lb.shape and bool(np.allclose(ma, mb, atol=1e-4))
    if not same:
        problems.append(f"the label maps are on different grids: shape {la.shape} vs {lb.shape}, "
                        f"IJK->RAS\n{ma}\nvs\n{mb}")
        return Comparison(False, {}, {}, 0.0, -1, {}, {}, 0.0, min_dice, max_mesh_rel, problems)
    la = la.astype(np.int32, copy=False)
    lb = lb.astype(np.int32, copy=False)
    n = int(max(la.max(initial=0), lb.max(initial=0))) + 1
    counts = np.bincount((la.ravel() * n + lb.ravel()), minlength=n * n).reshape(n, n)
    dice: dict[int, float] = {}
    voxels: dict[int, tuple[int, int]] = {}
    for v in range(1, n):
        ca, cb, both = int(counts[v].sum()), int(counts[:, v].sum()), int(counts[v, v])
        if ca == 0 and cb == 0:
            continue
        dice[v] = 2.0 * both / (ca + cb)
        voxels[v] = (ca, cb)
        if dice[v] < min_dice:
            problems.append(f"label {v}: Dice {dice[v]:.5f} < {min_dice} ({ca} vs {cb} voxels)")
    total = int(counts.sum())
    agree = int(np.trace(counts))
    confusion = {(i, j): int(counts[i, j]) for i in range(n) for j in range(n) if i != j and counts[i, j]}
    mesh: dict[int, tuple[float, float]] = {}
    for key in sorted(set(a.meshes) | set(b.meshes), key=int):
        v = int(key)
        if key not in a.meshes or key not in b.meshes:
            problems.append(f"label {v}: a mesh on one side only (MedSeg {key in a.meshes}, MONAI {key in b.meshes})")
            continue
        va = mesh_volume_ml(Path(a.out_dir) / a.meshes[key])
        vb = mesh_volume_ml(Path(b.out_dir) / b.meshes[key])
        mesh[v] = (va, vb)
        if abs(vb - va) > max_mesh_rel * abs(va):
            problems.append(f"label {v}: mesh volumes {va:.2f} vs {vb:.2f} mL differ by more than {max_mesh_rel:.0%}")
    return Comparison(True, dice, voxels, agree / total, total - agree, confusion, mesh,
                      float(abs(np.linalg.det(ma[:3, :3]))), min_dice, max_mesh_rel, problems)
