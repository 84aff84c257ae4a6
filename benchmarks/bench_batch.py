#!/usr/bin/env python
"""Benchmark: cases per minute of ``medseg batch`` (Dask worker processes) vs ``medseg run`` in a shell loop.

Input: ``--cases`` N (default 8) of MedSeg's synthetic chest phantom (``make_chest_phantom(seed=s)``,
s = 1..N: the same anatomy, other noise; its default demo grid, 192 x 160 x 96 voxels (IJK) at
1.5 x 1.5 x 2.5 mm, int16 HU), written once as gzip NRRD into ``--cache``/chest-N/ (reused by later runs;
that folder holds exactly the N cases, so ``medseg batch`` can be given the folder). Nothing is downloaded.

The sides (each a subprocess of this one, one after the other, alternating order with ``--repeat``; the
same ``--task`` (default ct-chest), the same default outputs, ``-q``, and the same ``--threads`` per case):

* **loop** (the baseline): what a user writes in bash, run through ``bash -c``::

      for f in "$CACHE"/*.nrrd; do
          medseg run "$f" --task "$TASK" --out "$OUT/$(basename "$f" .nrrd)" --device cpu --threads N -q || exit
      done

  one ``medseg run`` process per case, sequential.
* **batch W**: ``medseg batch CACHE --task TASK --out OUT --workers W --device cpu --threads N -q`` for
  W = 1, 2, 4, ... and the usable cores (the CPUs this process may run on; no more than the cases), or
  ``--workers W...``.
* on a machine where torch sees CUDA (``--gpu auto``, the default; ``--gpu on`` insists): **loop cuda**,
  the same loop with ``--device cuda``, and **batch cuda**, ``--device cuda --workers G`` (one worker per
  GPU; each takes ``cuda:i``).

Threads: every side runs each case with ``--threads`` (default 1) CPU threads (torch, ITK, VTK, Mesa;
``MEDSEG_THREADS`` is set to the same). One thread per case is what ``medseg batch`` gives each worker
when the workers fill the cores (and what ``medseg run`` takes by default on a 2-core machine: cores
minus one), and W workers x 1 thread never asks for more than the cores; so a side is faster only by
reusing its processes (imports, start-up) and by running cases side by side, not by threading a case
differently.

Timing: wall clock from the subprocess's start to the last file written under its output folder (file
modification times; the batch's cluster start and close are inside). Before any side is timed, one
``medseg run`` of the first case runs untimed, so that the first side does not pay for a cold file cache.

Before the timings count, the answers are compared: for every case, the label array and geometry of
``segmentation.seg.nrrd`` (read with :func:`medseg.io.seg_nrrd.read_seg_nrrd`) and the segments of
``report.json`` (label value, name, voxel count, volume mL) of each batch side must equal the loop's on
the same device, and ``batch_status.json`` must say ``ok`` for every case; otherwise the script names
the case and exits 1. (Loop cuda vs loop cpu is printed, not required: this compares batch with loop.)

Printed per side: cases/min, ratio = side's cases/min / loop's cases/min on the same device (> 1: the
side is faster), workers, threads per case, wall time, the largest per-case peak memory (``peak_memory_mib``
of ``batch_status.json`` rows; for the loop the same figure from each ``report.json``), the largest
process's max RSS of the side's process tree (``wait4`` ``ru_maxrss``: for the loop, the largest
``medseg run``; for a batch, a worker or the client), the CPU time (user + system) of the side's process
tree per case (what the side costs, whatever else runs on the machine), the mean in-process case time
(``report.json`` ``total_time_s``; ``time_s`` of the batch rows) and the load average before and after
each side; the machine (CPU, usable cores, memory, GPUs).

``--no-html`` leaves ``report.html`` and its figures out on every side (about half of a case's compute
on this grid; the default keeps them: they are part of what a user gets from both commands).

    python benchmarks/bench_batch.py --cases 4                     # quick
    python benchmarks/bench_batch.py                               # 8 cases, CPU (and CUDA where present)
    python benchmarks/bench_batch.py --gpu on --cases 4            # on a GPU machine (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "MedSegExtension"))

import numpy as np
import psutil
import torch

from medseg.cli.common import positive_int
from medseg.core.threads import usable_cpus
from medseg.data.phantom import make_chest_phantom
from medseg.io.seg_nrrd import read_seg_nrrd
from medseg.io.volume_writer import write_volume_nrrd

#: the cases' file names in the cache (seed s)
CASE_PATTERN = "chest_s{seed:03d}.nrrd"
#: the batch's manifest
STATUS_FILE = "batch_status.json"
#: the shell loop, run as ``bash -c LOOP bench CACHE TASK OUT DEVICE THREADS [FLAGS...]``
LOOP = (
    'cache=$1; task=$2; out=$3; device=$4; threads=$5; shift 5\n'
    'for f in "$cache"/*.nrrd; do\n'
    '    medseg run "$f" --task "$task" --out "$out/$(basename "$f" .nrrd)" --device "$device" '
    '--threads "$threads" -q "$@" || exit\n'
    'done\n'
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--cases", type=positive_int, default=8, help="number of phantom cases (default 8)")
    ap.add_argument("--task", default="ct-chest", help="task of every side (default ct-chest)")
    ap.add_argument("--threads", type=positive_int, default=1,
                    help="CPU threads per case on every side (--threads and MEDSEG_THREADS; default 1)")
    ap.add_argument("--workers", type=positive_int, nargs="+", default=None, metavar="W",
                    help="worker counts of the CPU batch sides (default 1, 2, 4, ... and the usable cores; "
                         "none above --cases)")
    ap.add_argument("--gpu", choices=("auto", "on", "off"), default="auto",
                    help="CUDA sides (loop cuda, batch cuda with one worker per GPU): auto (when torch sees "
                         "CUDA; default), on (refuse to run without), off")
    ap.add_argument("--no-html", action="store_true", help="pass --no-html to every side (no report.html)")
    ap.add_argument("--repeat", type=positive_int, default=1,
                    help="timed rounds, side order reversed every other round; the best of each side is "
                         "reported (default 1)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "medseg-bench-batch",
                    help="folder for the phantom cases (reused by later runs)")
    ap.add_argument("--out", type=Path, default=None,
                    help="keep every side's outputs here (default: a temporary folder, removed)")
    return ap.parse_args(argv)


# ------------------------------------------------------------------------------ the input and the machine
def phantom_cases(cache: Path, n: int) -> Path:
    """The folder ``cache/chest-<n>/`` holding exactly ``n`` phantom NRRDs (seeds 1..n; made when missing)."""
    folder = cache / f"chest-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    names = {CASE_PATTERN.format(seed=s) for s in range(1, n + 1)}
    extra = sorted(p.name for p in folder.iterdir() if p.name not in names)
    if extra:
        raise SystemExit(f"{folder} holds other entries than the {n} phantom cases: {', '.join(extra)}; "
                         "remove them (medseg batch would take every image there as a case)")
    for s in range(1, n + 1):
        path = folder / CASE_PATTERN.format(seed=s)
        if not path.exists():
            t = time.perf_counter()
            volume, _truth = make_chest_phantom(seed=s)
            write_volume_nrrd(volume, path)
            print(f"  wrote {path} ({'x'.join(map(str, volume.shape_ijk))} IJK, spacing "
                  f"{'x'.join(f'{x:g}' for x in volume.spacing)} mm) in {time.perf_counter() - t:.1f} s", flush=True)
    return folder


def default_workers(usable: int, n_cases: int) -> list[int]:
    """1, 2, 4, ... below ``usable`` and ``usable`` itself, none above ``n_cases``."""
    counts = []
    w = 1
    while w < usable:
        counts.append(w)
        w *= 2
    counts.append(usable)
    return sorted({min(c, n_cases) for c in counts})


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu)
    except OSError:
        pass
    mem = psutil.virtual_memory()
    text = (f"{cpu}, {os.cpu_count()} logical CPUs ({usable_cpus()} usable by this process), memory "
            f"{mem.total / 2**30:.1f} GiB ({mem.available / 2**30:.1f} GiB available)")
    if torch.cuda.is_available():
        text += "; GPUs: " + ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return text


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def medseg_dir() -> Path:
    """The folder of the ``medseg`` command of this Python (its console script), put first on the sides' PATH."""
    here = Path(sys.executable).parent
    if (here / "medseg").exists():
        return here
    found = shutil.which("medseg")
    if found is None:
        raise SystemExit(f"no `medseg` command next to {sys.executable} or on PATH: install the project "
                         "(pip install -e .) into this Python's environment")
    return Path(found).parent


# ------------------------------------------------------------------------------ running a side
@dataclass
class Side:
    """One side of the comparison, and what one run of it gave."""

    name: str
    device: str
    workers: int | None  # None: the loop
    out: Path = Path()
    wall_s: float = 0.0  # start -> last file written
    exit_s: float = 0.0  # start -> process exit
    max_rss_mib: float = 0.0  # the largest process of its tree (wait4 ru_maxrss)
    cpu_s: float = 0.0  # CPU time (user + system) of its process tree
    case_peak_mib: float | None = None  # the largest per-case peak_memory_mib
    case_mean_s: float | None = None  # mean in-process time of a case
    load_before: str = ""
    load_after: str = ""
    problems: list[str] = field(default_factory=list)

    def cases_per_min(self, n: int) -> float:
        return n / self.wall_s * 60.0


def last_write(folder: Path) -> float:
    """The latest modification time (epoch s) of a file under ``folder``."""
    times = [p.stat().st_mtime for p in folder.rglob("*") if p.is_file()]
    if not times:
        raise SystemExit(f"nothing was written under {folder}")
    return max(times)


def run_process(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int, float]:
    """Run ``cmd`` (stdout and stderr to ``log``); return (start epoch s, exit epoch s, max RSS MiB of the
    largest process of its tree, CPU s (user + system) of its tree); exit with the log's tail when it fails."""
    with open(log, "w", encoding="utf-8") as fh:
        start = time.time()
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(proc.pid, 0)
        end = time.time()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-6000:]
        raise SystemExit(f"{tail}\ncommand failed (exit {proc.returncode}): {' '.join(cmd)} (log {log})")
    return start, end, usage.ru_maxrss // 1024, usage.ru_utime + usage.ru_stime  # ru_maxrss in KiB (Linux)


def side_command(side: Side, args: argparse.Namespace, cases_dir: Path) -> list[str]:
    flags = ["--no-html"] if args.no_html else []
    if side.workers is None:
        return ["bash", "-c", LOOP, "bench_batch", str(cases_dir), args.task, str(side.out), side.device,
                str(args.threads), *flags]
    return ["medseg", "batch", str(cases_dir), "--task", args.task, "--out", str(side.out), "--workers",
            str(side.workers), "--device", side.device, "--threads", str(args.threads), "-q", *flags]


def run_side(side: Side, args: argparse.Namespace, cases_dir: Path, env: dict[str, str], out: Path) -> Side:
    """Run ``side`` into ``out`` (a new folder) and return a copy with its figures."""
    run = Side(side.name, side.device, side.workers, out=out)
    cmd = side_command(run, args, cases_dir)
    if side.workers is None:
        out.mkdir(parents=True)
    print(f"  running {side.name} ...", flush=True)
    run.load_before = load()
    start, end, run.max_rss_mib, run.cpu_s = run_process(cmd, env, out.parent / f"{out.name}.log")
    run.load_after = load()
    run.wall_s = last_write(out) - start
    run.exit_s = end - start
    peaks: list[float] = []
    times: list[float] = []
    if side.workers is None:
        for report in sorted(out.glob("*/report.json")):
            data = json.loads(report.read_text(encoding="utf-8"))
            peaks.extend(float(v) for v in (data.get("peak_memory_mib") or {}).values() if v is not None)
            times.append(float(data["total_time_s"]))
    else:
        for row in json.loads((out / STATUS_FILE).read_text(encoding="utf-8")):
            if row.get("peak_memory_mib") is not None:
                peaks.append(float(row["peak_memory_mib"]))
            if row.get("time_s") is not None:
                times.append(float(row["time_s"]))
    run.case_peak_mib = max(peaks) if peaks else None
    run.case_mean_s = sum(times) / len(times) if times else None
    print(f"    {side.name}: {run.wall_s:.1f} s to the last file ({run.exit_s:.1f} s to exit; CPU {run.cpu_s:.1f} s); "
          f"load {run.load_before} -> {run.load_after}", flush=True)
    return run


# ------------------------------------------------------------------------------ same answer
def _segments(report: Path) -> list[tuple[Any, ...]]:
    data = json.loads(report.read_text(encoding="utf-8"))
    return [(s["label_value"], s["name"], s["voxel_count"], s["volume_ml"]) for s in data["segments"]]


def compare_case(case: str, ref: Path, other: Path) -> list[str]:
    """What differs between two output folders of ``case`` (labels, geometry, report segments); [] when none."""
    a = read_seg_nrrd(ref / "segmentation.seg.nrrd")
    b = read_seg_nrrd(other / "segmentation.seg.nrrd")
    problems = []
    if a.array.shape != b.array.shape or a.array.dtype != b.array.dtype:
        problems.append(f"{case}: label arrays {a.array.shape} {a.array.dtype} vs {b.array.shape} {b.array.dtype}")
    elif not np.array_equal(a.array, b.array):
        problems.append(f"{case}: {int(np.count_nonzero(a.array != b.array))} label voxels differ")
    if not np.array_equal(a.volume.ijk_to_ras, b.volume.ijk_to_ras):
        problems.append(f"{case}: IJK->RAS {a.volume.ijk_to_ras.tolist()} vs {b.volume.ijk_to_ras.tolist()}")
    sa, sb = _segments(ref / "report.json"), _segments(other / "report.json")
    if sa != sb:
        diff = [f"{x} vs {y}" for x, y in zip(sa, sb, strict=False) if x != y] or [f"{len(sa)} vs {len(sb)} segments"]
        problems.append(f"{case}: report.json segments (label, name, voxels, mL) differ: {'; '.join(diff[:3])}")
    return problems


def check_side(run: Side, ref: Side, cases: list[str]) -> list[str]:
    """``run``'s answer against the loop's ``ref`` for every case, and its batch manifest; [] when the same."""
    problems = []
    if run.workers is not None:
        rows = {r["case"]: r for r in json.loads((run.out / STATUS_FILE).read_text(encoding="utf-8"))}
        if sorted(rows) != cases:
            problems.append(f"{STATUS_FILE} lists cases {sorted(rows)}, expected {cases}")
        problems += [f"{c}: status {r['status']} ({r.get('reason')})" for c, r in rows.items() if r["status"] != "ok"]
    for case in cases:
        if not (run.out / case / "segmentation.seg.nrrd").is_file():
            problems.append(f"{case}: no segmentation.seg.nrrd in {run.out / case}")
            continue
        problems += compare_case(case, ref.out / case, run.out / case)
    return problems


# ------------------------------------------------------------------------------ printing
def _mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def print_table(best: dict[str, Side], loops: dict[str, Side], n: int, threads: int) -> None:
    print("| side | device | workers | threads/case | cases/min | ratio vs loop | wall s | CPU s per case | "
          "case s (mean, in-process) | peak MiB per case (report) | max RSS MiB (largest process) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for s in best.values():
        loop = loops[s.device]
        ratio = s.cases_per_min(n) / loop.cases_per_min(n)
        workers = "1 process per case" if s.workers is None else str(s.workers)
        mean = "-" if s.case_mean_s is None else f"{s.case_mean_s:.1f}"
        print(f"| {s.name} | {s.device} | {workers} | {threads} | {s.cases_per_min(n):.2f} | {ratio:.2f} | "
              f"{s.wall_s:.1f} | {s.cpu_s / n:.1f} | {mean} | {_mib(s.case_peak_mib)} | {s.max_rss_mib:.0f} |")


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.gpu == "on" and not cuda:
        raise SystemExit(f"--gpu on: no CUDA device is visible to torch {torch.__version__}")
    usable = usable_cpus()
    # medseg batch never starts more workers than there are cases
    workers = sorted({min(w, args.cases) for w in args.workers}) if args.workers else \
        default_workers(usable, args.cases)
    sides = [Side("loop", "cpu", None)] + [Side(f"batch {w}", "cpu", w) for w in workers]
    if cuda and args.gpu != "off":
        sides += [Side("loop cuda", "cuda", None), Side("batch cuda", "cuda", torch.cuda.device_count())]

    print(f"machine: {describe_machine()}; load average {load()}")
    cases_dir = phantom_cases(args.cache, args.cases)
    cases = sorted(p.name[: -len(".nrrd")] for p in cases_dir.glob("*.nrrd"))
    env = dict(os.environ)
    env.update(PATH=f"{medseg_dir()}{os.pathsep}{env.get('PATH', '')}", MEDSEG_THREADS=str(args.threads),
               PYTHONUNBUFFERED="1")
    print(f"input: {args.cases} cases in {cases_dir}; task {args.task}; threads per case {args.threads} "
          f"(--threads and MEDSEG_THREADS); usable cores {usable}; html {'off' if args.no_html else 'on'}; "
          f"torch {torch.__version__}")
    print(f"loop: bash -c LOOP bench_batch {cases_dir} {args.task} OUT DEVICE {args.threads}"
          + (" --no-html" if args.no_html else "") + ", LOOP:")
    print("".join(f"    {line}\n" for line in LOOP.splitlines()), end="")

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="medseg-bench-batch-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        warm = root / "warm-up"
        if warm.exists():
            shutil.rmtree(warm)
        print("  warm-up (untimed): medseg run on the first case ...", flush=True)
        run_process(["medseg", "run", str(cases_dir / f"{cases[0]}.nrrd"), "--task", args.task, "--out",
                     str(warm), "--device", "cpu", "--threads", str(args.threads), "-q"], env,
                    root / "warm-up.log")
        best: dict[str, Side] = {}
        problems: list[str] = []
        for r in range(args.repeat):
            order = sides if r % 2 == 0 else sides[::-1]
            runs: dict[str, Side] = {}
            for side in order:
                out = root / f"round{r}" / side.name.replace(" ", "-")
                if out.exists():
                    raise SystemExit(f"{out} exists already: give another --out")
                out.parent.mkdir(parents=True, exist_ok=True)
                runs[side.name] = run_side(side, args, cases_dir, env, out)
            loops = {s.device: runs[s.name] for s in sides if s.workers is None}
            for s in sides:
                if s.workers is not None:
                    problems += [f"round {r}, {s.name}: {p}" for p in check_side(runs[s.name], loops[s.device], cases)]
                if s.name not in best or runs[s.name].wall_s < best[s.name].wall_s:
                    best[s.name] = runs[s.name]
            if "cuda" in loops:
                diff = [p for c in cases for p in compare_case(c, loops["cpu"].out / c, loops["cuda"].out / c)]
                print(f"  loop cuda vs loop cpu (not required): {'; '.join(diff) if diff else 'same labels'}")
        loops = {s.device: best[s.name] for s in sides if s.workers is None}

        print()
        print(f"== {args.cases} cases of {args.task}: medseg batch vs medseg run in a shell loop "
              f"(best of {args.repeat}; wall = start -> last file written) ==")
        print_table(best, loops, args.cases, args.threads)
        print("ratio = side's cases/min / loop's cases/min on the same device (> 1: the side is faster)")
        if "cuda" in loops:
            b = best["batch cuda"]
            cpu_loop = loops["cpu"].cases_per_min(args.cases)
            print(f"batch cuda vs the CPU loop: {b.cases_per_min(args.cases) / cpu_loop:.2f}")
        print(f"machine: usable cores {usable}; load average now {load()}")
        if problems:
            for p in problems:
                print(f"NOT THE SAME: {p}")
            print("ratios not valid: a batch side does not give the loop's answer (see above)")
            return 1
        print(f"check: every batch side gives the loop's labels, geometry and report.json segment volumes for all "
              f"{args.cases} cases, and {STATUS_FILE} says ok for each")
        return 0
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
