"""Benchmark: MedSeg's sliding-window inference vs ``monai.inferers.sliding_window_inference``.

Same MONAI ``UNet`` (channels 16-32-64-128-256, strides 2, two residual units, random weights),
same input, same ROI (96^3), overlap 0.5, Gaussian blending, same ``sw_batch_size``; both run
in this process under ``torch.inference_mode``. The argmax of both outputs must be identical
(asserted) and the max logit difference is printed. Ratio = MONAI time / MedSeg time (> 1: ours
is faster). Peak memory: GPU ``max_memory_allocated``; CPU: peak RSS growth (sampled).

    python benchmarks/bench_inference.py                 # CPU, 256x256x128 (IJK)
    python benchmarks/bench_inference.py --quick         # smoke size 96x96x64
    python benchmarks/bench_inference.py --device cuda --size 512 512 300 --end-to-end

``--end-to-end`` also times ``medseg.pipeline.model_tasks.run_model`` on the same volume through a model
folder (card + weights written to a temp folder): load + verify weights, prepare, plan, sliding
window (AMP + chosen batch on CUDA), map back, post-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "MedSegExtension"))

from medseg.core.threads import configure_threads
from medseg.inference.memory import estimate_plan
from medseg.inference.sliding_window import n_windows, sliding_window_inference

UNET_ARGS = {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [16, 32, 64, 128, 256],
             "strides": [2, 2, 2, 2], "num_res_units": 2}


class PeakRSS:
    """Peak resident memory growth (bytes) of this process while the block runs (10 ms sampling)."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()
        return self

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.stop = True
        self.t.join()
        self.delta = self.peak - self.base


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        return out, time.perf_counter() - t, torch.cuda.max_memory_allocated() - base
    with PeakRSS() as m:
        t = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t
    return out, dt, m.delta


def main(argv=None) -> int:
    from monai.inferers import sliding_window_inference as monai_swi
    from monai.networks.nets import UNet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, nargs=3, default=None, metavar=("I", "J", "K"))
    ap.add_argument("--quick", action="store_true", help="smoke size 96x96x64")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sw-batch-size", type=int, default=None, help="default: MedSeg's memory plan")
    ap.add_argument("--end-to-end", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads for both sides (default 0: MedSeg's default, the usable cores minus one)")
    args = ap.parse_args(argv)
    configure_threads(args.threads or None)
    device = torch.device(args.device)
    size = tuple(args.size) if args.size else ((96, 96, 64) if args.quick else (256, 256, 128))
    roi = (96, 96, 96)
    torch.manual_seed(0)
    net = UNet(**UNET_ARGS).eval().to(device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand((1, 1, *size), generator=g).to(device)
    plan = estimate_plan(size, 1, 2, roi, device, net, n_windows(size, roi, 0.5))
    bs = args.sw_batch_size or plan.sw_batch_size
    print(f"device {device}, volume {size} (IJK), ROI {roi}, overlap 0.5, gaussian, {n_windows(size, roi, 0.5)} "
          f"windows, sw_batch_size {bs}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    def ours():
        return sliding_window_inference(x, net, roi, 0.5, mode="gaussian", sw_batch_size=bs)

    def theirs():
        return monai_swi(x, roi, bs, net, overlap=0.5, mode="gaussian")

    with torch.inference_mode():
        warm = x[..., :min(size[0], 144), :min(size[1], 96), :min(size[2], 96)]  # 2 windows: same batch shape
        sliding_window_inference(warm, net, roi, 0.5, sw_batch_size=bs)  # warm-up (allocator, oneDNN/cuDNN)
        monai_swi(warm, roi, bs, net, overlap=0.5, mode="gaussian")
        t_ours, t_monai = [], []
        for r in range(args.repeats):  # alternate the order, keep the best time of each
            if r % 2 == 0:
                a, ta, ma = timed(ours, device)
                b, tb, mb = timed(theirs, device)
            else:
                b, tb, mb = timed(theirs, device)
                a, ta, ma = timed(ours, device)
            t_ours.append(ta)
            t_monai.append(tb)
            print(f"  repeat {r + 1}: MedSeg {ta:.2f} s, MONAI {tb:.2f} s", flush=True)
        diff = float((a - b).abs().max())
        same = bool(torch.equal(a.argmax(1), b.argmax(1)))
    assert same, f"argmax differs (max logit difference {diff:g})"
    to, tm = min(t_ours), min(t_monai)
    unit = "GPU peak allocated" if device.type == "cuda" else "peak RSS growth"
    print(f"MedSeg  {to:8.2f} s   {unit} {ma / 2**20:8.0f} MiB")
    print(f"MONAI   {tm:8.2f} s   {unit} {mb / 2**20:8.0f} MiB")
    print(f"ratio (MONAI / MedSeg) {tm / to:.3f}; identical argmax: {same}; max logit difference {diff:.2e}")

    if args.end_to_end:
        from medseg.core.volume import Volume
        from medseg.models.authoring import save_model_folder
        from medseg.models.registry import open_model
        from medseg.pipeline.model_tasks import run_model

        card = {"schema": "medseg-model-card/1", "name": "bench-unet", "dims": 3,
                "network": {"class": "UNet", "args": UNET_ARGS}, "inputs": [{"name": "ct", "modality": "CT"}],
                "preprocessing": {"normalization": {"kind": "none"}},
                "inference": {"roi_size": list(roi), "overlap": 0.5},
                "labels": [{"value": 1, "name": "Thing"}], "licence": {"name": "none", "commercial_use": False}}
        with tempfile.TemporaryDirectory() as d:
            save_model_folder(Path(d) / "m", card, net.cpu())
            vol = Volume.from_geometry(x[0, 0].cpu().numpy().transpose(2, 1, 0), (0.8, 0.8, 1.5), name="bench")
            model = open_model(Path(d) / "m")
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            plans: list[str] = []  # the runner logs the inference plan it chose on the "medseg" logger
            handler = logging.Handler(logging.INFO)
            handler.emit = lambda record: plans.append(record.getMessage())  # type: ignore[method-assign]
            logging.getLogger("medseg").addHandler(handler)
            logging.getLogger("medseg").setLevel(logging.INFO)
            t = time.perf_counter()
            try:
                run_model(model, [vol], device=device)
            finally:
                logging.getLogger("medseg").removeHandler(handler)
            dt = time.perf_counter() - t
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
            plan = next((m.split(": ", 1)[1] for m in plans if m.startswith("model bench-unet: ")), "plan not logged")
        print(f"end to end (run_model: verify+load, prepare, {plan}, map back, post-process): "
              f"{dt:.2f} s, GPU peak {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
