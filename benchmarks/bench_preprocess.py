#!/usr/bin/env python
"""Benchmark: MedSeg resample-to-spacing + normalisation vs plain SimpleITK + numpy.

Ours:     ``resample_to_spacing(volume, (1.5, 1.5, 1.5)) -> normalize_ct_window`` (or ``normalize_robust_zscore``)
Baseline: ``SimpleITK.Resample`` (linear, onto the very same output grid, float32 output)
          -> numpy normalisation with the same definition.

Both run in this process on the same synthetic int16 CT-like volume (an ellipsoidal body with
organs and noise in air at -1000 HU), spacing 0.8 x 0.8 x 2.5 mm, a slightly oblique direction.
Before timing, the outputs are checked to agree: max abs difference after normalisation
<= 1e-5 for the CT window (0..1 scale, i.e. 0.02 HU for a 2000 HU window) and <= 1e-4 for the
z-score (units of standard deviations); float32 arithmetic vs ITK's double arithmetic is the only
source of difference.

Prints, per size: time of each side (best of ``--repeat`` rounds in which the two sides
alternate, so that load from other processes hits both alike), ratio = baseline_time / ours_time
(> 1 means ours is faster), and the peak memory of each side: RSS growth above the level before
the call (sampled every 2 ms by a thread), the peak of Python-tracked allocations (tracemalloc:
numpy buffers, not torch's or ITK's own allocator) and, on CUDA, torch.cuda.max_memory_allocated.

    python benchmarks/bench_preprocess.py --quick
    python benchmarks/bench_preprocess.py                # 256x256x128 and 512x512x300, CPU
    python benchmarks/bench_preprocess.py --device cuda --normalize robust-zscore
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
import tracemalloc

import numpy as np
import psutil
import SimpleITK as sitk
import torch

from medseg.core.frames import volume_to_sitk
from medseg.core.torch_devices import resolve_device_with_note
from medseg.core.volume import Volume
from medseg.preprocess.intensity import normalize_ct_window, normalize_robust_zscore
from medseg.preprocess.resample import resample_to_spacing, spacing_grid

TARGET = (1.5, 1.5, 1.5)
WINDOW = (-1000.0, 1000.0)
TOL = {"ct-window": 1e-5, "robust-zscore": 1e-4}


def make_volume(shape_ijk: tuple[int, int, int], spacing=(0.8, 0.8, 2.5), seed: int = 0) -> Volume:
    """Synthetic int16 CT: air -1000, body ellipsoid ~40 HU with a bright 'bone' and a dark 'lung'."""
    ni, nj, nk = shape_ijk
    rng = np.random.default_rng(seed)
    k, j, i = np.ogrid[:nk, :nj, :ni]
    x = (i - ni / 2) / (0.42 * ni)
    y = (j - nj / 2) / (0.35 * nj)
    z = (k - nk / 2) / (0.6 * nk)
    r2 = x * x + y * y + z * z
    arr = np.full((nk, nj, ni), -1000, dtype=np.int16)
    arr[np.broadcast_to(r2 < 1.0, arr.shape)] = 40
    arr[np.broadcast_to((x - 0.35) ** 2 + y ** 2 < 0.04, arr.shape) & (r2 < 1)] = 700
    arr[np.broadcast_to((x + 0.4) ** 2 + (y + 0.1) ** 2 < 0.08, arr.shape) & (r2 < 1)] = -850
    arr += rng.normal(0, 20, size=arr.shape).astype(np.int16)
    c, s = np.cos(np.deg2rad(3.0)), np.sin(np.deg2rad(3.0))
    direction = np.array([[-c, -s, 0.0], [s, -c, 0.0], [0.0, 0.0, 1.0]])  # RAS columns: LPS-like, tilted 3 deg
    return Volume.from_geometry(arr, spacing, (120.0, 130.0, -200.0), direction, name="synthetic-ct")


# ------------------------------------------------------------------------------ the two sides
def ours(volume: Volume, normalize: str, device: torch.device) -> np.ndarray:
    r = resample_to_spacing(volume, TARGET, "linear", device)
    if normalize == "ct-window":
        return normalize_ct_window(r, WINDOW[0], WINDOW[1], device).array
    return normalize_robust_zscore(r, None, device).array


def baseline(image: sitk.Image, shape_kji, matrix_ras: np.ndarray, normalize: str) -> np.ndarray:
    ref = volume_to_sitk(Volume(np.zeros((1, 1, 1), np.uint8), matrix_ras))  # geometry only (LPS)
    out = sitk.Resample(
        image, [int(shape_kji[2]), int(shape_kji[1]), int(shape_kji[0])], sitk.Transform(), sitk.sitkLinear,
        ref.GetOrigin(), ref.GetSpacing(), ref.GetDirection(), 0.0, sitk.sitkFloat32,
    )
    a = sitk.GetArrayViewFromImage(out)
    if normalize == "ct-window":
        lo, hi = WINDOW
        return ((np.clip(a, lo, hi) - np.float32(lo)) * np.float32(1.0 / (hi - lo))).astype(np.float32)
    fg = a[a > a.min()]
    p_lo, p_hi = np.percentile(fg, [0.5, 99.5])
    fg = np.clip(fg, p_lo, p_hi)
    mean, std = fg.mean(dtype=np.float64), fg.std(dtype=np.float64)
    return ((a - np.float32(mean)) * np.float32(1.0 / std)).astype(np.float32)


# ------------------------------------------------------------------------------ measuring
class PeakRSS:
    """Peak RSS growth (bytes) above the level at entry, sampled by a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.proc = psutil.Process(os.getpid())
        self.interval = interval

    def __enter__(self) -> PeakRSS:
        gc.collect()
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self._stop.set()
        self._t.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _timed(fn, device: torch.device) -> float:
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def memory(fn, device: torch.device):
    """(RSS growth bytes, tracemalloc peak bytes, cuda peak bytes or None) of one call."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as rss:
        tracemalloc.start()
        fn()
        _, traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    cuda_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    return rss.growth, traced, cuda_peak


def interleaved_best(fns, repeat: int, device: torch.device) -> list:
    """Best time of each function over ``repeat`` rounds, the functions alternating within a round."""
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for n, fn in enumerate(fns):
            best[n] = min(best[n], _timed(fn, device))
    return best


def mib(x) -> str:
    return "n/a" if x is None else f"{x / 2**20:8.1f} MiB"


def run_size(shape_ijk, normalize: str, device: torch.device, repeat: int) -> float:
    vol = make_volume(shape_ijk)
    image = volume_to_sitk(vol)
    shape_kji, matrix = spacing_grid(vol, TARGET)

    def run_base():
        return baseline(image, shape_kji, matrix, normalize)

    def run_ours():
        return ours(vol, normalize, device)

    b_out, o_out = run_base(), run_ours()  # warm-up, and the answers compared
    assert o_out.shape == b_out.shape, (o_out.shape, b_out.shape)
    diff = float(np.max(np.abs(o_out - b_out)))
    assert diff <= TOL[normalize], f"outputs disagree: max abs diff {diff:.3g} > {TOL[normalize]}"
    del b_out, o_out
    b_t, o_t = interleaved_best([run_base, run_ours], repeat, device)
    b_rss, b_tr, _ = memory(run_base, device)
    o_rss, o_tr, o_cuda = memory(run_ours, device)
    ni, nj, nk = shape_ijk
    print(f"\n{ni}x{nj}x{nk} int16 (0.8x0.8x2.5 mm) -> {shape_kji[2]}x{shape_kji[1]}x{shape_kji[0]} at 1.5 mm, "
          f"normalise={normalize}, device={device}, torch threads={torch.get_num_threads()}")
    print(f"  agreement: max abs diff {diff:.2e} (tolerance {TOL[normalize]:g})")
    print(f"  baseline  SimpleITK Resample + numpy : {b_t * 1000:9.1f} ms   RSS peak +{mib(b_rss)}   "
          f"tracemalloc {mib(b_tr)}")
    print(f"  ours      torch resample + normalise : {o_t * 1000:9.1f} ms   RSS peak +{mib(o_rss)}   "
          f"tracemalloc {mib(o_tr)}" + (f"   cuda max allocated {mib(o_cuda)}" if o_cuda is not None else ""))
    ratio = b_t / o_t
    print(f"  ratio baseline/ours = {ratio:.2f}  ({'ours faster' if ratio >= 1 else 'baseline faster'})")
    return ratio


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny smoke size (64x64x24) only")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--normalize", choices=sorted(TOL), default="ct-window")
    p.add_argument("--repeat", type=int, default=7, help="timed rounds, sides alternating (best is reported)")
    p.add_argument("--threads", type=int, default=0,
                   help="CPU threads for BOTH sides (torch.set_num_threads and SimpleITK's global default); "
                        "0: each library's default")
    p.add_argument("--slab-mb", type=float, default=0,
                   help="override medseg's slab size (MiB of float32 source per slab; 0: library default)")
    args = p.parse_args(argv)
    if args.slab_mb > 0:
        from medseg.preprocess import _slabs

        _slabs.SLAB_BYTES = int(args.slab_mb * 2**20)
    device, note = resolve_device_with_note(args.device)
    if note:
        print("note:", note)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    print(f"SimpleITK threads={sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}, torch {torch.__version__}, "
          f"SimpleITK {sitk.Version.VersionString()}, CPU cores={os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.2f}")
    sizes = [(64, 64, 24)] if args.quick else [(256, 256, 128), (512, 512, 300)]
    ratios = [run_size(s, args.normalize, device, max(1, args.repeat)) for s in sizes]
    print(f"\nratios (baseline/ours): {', '.join(f'{r:.2f}' for r in ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
