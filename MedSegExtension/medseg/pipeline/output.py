"""Write a ``Result`` into one output folder, all or nothing.

Everything is written into a hidden staging folder next to the target and renamed into place only
when every file is written; on any error (or cancel) the staging folder is removed and an existing
target is left untouched. An existing target is replaced only when MedSeg wrote it and ``overwrite``
is true, and never when it is or holds one of the result's inputs
(:func:`medseg.io.atomic.check_replaceable`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from medseg.core.errors import InputError, OutputError
from medseg.core.formats import DicomFormat, parse_mesh_formats
from medseg.core.peak_memory import PeakMemory
from medseg.core.progress import CancelToken, ProgressCallback, no_progress
from medseg.core.result import Result
from medseg.io.atomic import OutputFolder
from medseg.io.dicom_seg import write_dicom_seg
from medseg.io.dicom_series import dicom_source_files
from medseg.io.filenames import unique_file_stem
from medseg.io.markups import write_markups_json, write_markups_per_box
from medseg.io.mesh_io import write_mesh
from medseg.io.rtstruct import write_rtstruct
from medseg.io.seg_nrrd import write_seg_nrrd
from medseg.io.volume_writer import write_volume_nrrd
from medseg.report import build_report, write_report_html, write_report_json
from medseg.report.json_report import VOLUME_FILE_PREFIX


def _record_peak(result: Result, report: dict | None, stage: str, peak: float | None) -> None:
    """Put a stage's peak resident memory (MiB; None: not measured) into the result and the report."""
    if peak is None:
        return
    result.peak_memory_mib[stage] = peak
    if report is not None:
        report.setdefault("peak_memory_mib", {})[stage] = round(peak, 1)


def write_result(
    result: Result,
    out_dir: Path,
    *,
    overwrite: bool = False,
    mesh_formats: Sequence[str] = ("stl",),
    dicom_formats: Sequence[str] = (),
    html: bool = True,
    progress: ProgressCallback = no_progress,
    cancel: CancelToken | None = None,
    extra: Callable[[Path], dict[str, str]] | None = None,
) -> dict[str, str]:
    """Write segmentation, boxes, models and reports into ``out_dir``; return {what: relative path}.

    Files: ``segmentation.seg.nrrd``; ``boxes.mrk.json`` (all ROIs, LPS as Slicer writes) and
    ``boxes/<name>.mrk.json`` (one per box); ``models/<segment>.<fmt>`` (LPS, header SPACE=LPS);
    with ``dicom_formats`` (:class:`medseg.core.formats.DicomFormat`; the first input must be a DICOM
    series, else ``InputError`` before anything is written): ``rtstruct.dcm`` and/or ``seg.dcm``;
    ``report.json`` (validated against the schema); ``report.html`` + ``figures/*.png``.
    ``extra(stage_dir)`` writes more files into the same all-or-nothing folder before the report and
    returns {what: relative path} for the report's file list.
    """
    formats = parse_mesh_formats(mesh_formats)
    dicom = tuple(DicomFormat.parse(f, "DICOM format") for f in dicom_formats)
    if {DicomFormat.DICOM_SEG, DicomFormat.DICOM_SEG_LABELMAP} <= set(dicom):
        raise InputError("choose one DICOM SEG encoding: dicom-seg (binary) or dicom-seg-labelmap, not both")
    source_files = _dicom_sources(result) if dicom else []
    cancel = cancel or CancelToken()
    try:
        return _write_all(result, Path(out_dir), overwrite, formats, dicom, source_files, html, progress, cancel,
                          extra)
    except OutputError:
        raise
    except OSError as e:
        raise OutputError(f"could not write the results to {out_dir}: {e}; the output folder was left as it was") from e


def _dicom_sources(result: Result) -> list[Path]:
    """The DICOM image files of the result's first input (``InputError`` when it has none)."""
    if result.preview is None:
        raise InputError("RTSTRUCT/DICOM SEG export needs the input volume (Result.preview), which this result lacks")
    return dicom_source_files(result.preview)


def _write_dicom(result: Result, dicom: Sequence[DicomFormat], source_files: list[Path], stage_dir: Path,
                 files: dict[str, str]) -> None:
    """``rtstruct.dcm`` / ``seg.dcm`` in the input series' study and frame of reference."""
    description = f"MedSeg {result.task}"
    for fmt in dicom:
        if fmt is DicomFormat.RTSTRUCT:
            notes = write_rtstruct(result.labelmap, source_files, stage_dir / fmt.filename,
                                   lesions=result.lesions, description=description)
        else:
            notes = write_dicom_seg(result.labelmap, source_files, stage_dir / fmt.filename,
                                    labelmap_encoding=fmt is DicomFormat.DICOM_SEG_LABELMAP,
                                    lesions=result.lesions, description=description)
        result.warnings.extend(notes)
        files[str(fmt)] = fmt.filename


def _write_all(result, out_dir, overwrite, formats, dicom, source_files, html, progress, cancel,
               extra=None) -> dict[str, str]:
    t0 = time.perf_counter()
    memory = PeakMemory()
    memory.start()
    files: dict[str, str] = {}
    taken_volumes: set[str] = {"segmentation", "report", "boxes"}
    inputs = [i["path"] for i in result.inputs if i.get("path")]
    with OutputFolder(Path(out_dir), overwrite=overwrite, inputs=inputs) as folder:
        stage_dir = Path(folder.path)
        progress(0.0, "writing segmentation")
        write_seg_nrrd(result.labelmap, stage_dir / "segmentation.seg.nrrd")
        files["segmentation"] = "segmentation.seg.nrrd"
        cancel.check()
        if result.boxes:
            progress(0.15, "writing boxes")
            write_markups_json(result.boxes, stage_dir / "boxes.mrk.json")
            files["boxes"] = "boxes.mrk.json"
            write_markups_per_box(result.boxes, stage_dir / "boxes")
            files["boxes_folder"] = "boxes"
        cancel.check()
        model_files: dict[str, list[str]] = {}
        if result.meshes and formats:
            (stage_dir / "models").mkdir()
            taken: set[str] = set()
            segs = [s for s in result.labelmap.segments if s.id in result.meshes]
            for n, seg in enumerate(segs):
                pd = result.meshes[seg.id]
                if pd is None or pd.GetNumberOfPoints() == 0:
                    continue
                stem = unique_file_stem(seg.name, taken, "segment", 80)
                for fmt in formats:
                    rel = f"models/{stem}{fmt.extension}"
                    write_mesh(pd, stage_dir / rel)
                    model_files.setdefault(seg.id, []).append(rel)
                progress(0.2 + 0.5 * (n + 1) / max(len(segs), 1), f"model {seg.name}")
                cancel.check()
            files["models"] = "models"
        if dicom:
            progress(0.72, "writing DICOM objects")
            _write_dicom(result, dicom, source_files, stage_dir, files)
            cancel.check()
        for vname, vol in result.volumes.items():
            rel = f"{unique_file_stem(vname, taken_volumes, 'volume')}.nrrd"
            write_volume_nrrd(vol, stage_dir / rel)
            files[f"{VOLUME_FILE_PREFIX}{vname}"] = rel
        if extra is not None:
            files.update(extra(stage_dir))
            cancel.check()
        progress(0.75, "writing report")
        result.timings["write"] = time.perf_counter() - t0
        _record_peak(result, report=None, stage="write", peak=memory.stop())
        report = build_report(result, files=files, device=result.device,
                              model_files=model_files)
        if html:
            # the page adds its own time to the report's timings and total before it is written
            memory.start()
            write_report_html(result, report, stage_dir)
            _record_peak(result, report, "report_html", memory.stop())
            files["report_html"] = "report.html"
            result.timings["report_html"] = report["timings_s"]["report_html"]
        files["report"] = "report.json"
        report["files"] = dict(files)
        write_report_json(report, stage_dir / "report.json")
        cancel.check()
    progress(1.0, "written")
    return files
