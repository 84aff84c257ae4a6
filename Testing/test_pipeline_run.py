"""run_task: stage order, cancel between stages, input count checks, determinism."""

import numpy as np
import pytest

from medseg.core.errors import CancelledError, InputError
from medseg.core.progress import CancelToken
from medseg.core.volume import Volume
from medseg.pipeline.run import RunOptions, run_task


def _blobs() -> Volume:
    arr = np.zeros((20, 30, 40), np.int16)
    arr[5:10, 5:12, 5:15] = 200
    arr[12:18, 18:26, 25:35] = 300
    return Volume.from_geometry(arr, spacing=(0.8, 0.9, 2.0), origin=(10, -5, 3), name="blobs")


def test_progress_is_monotonic_and_reaches_one():
    seen = []
    res = run_task([_blobs()], RunOptions("threshold", device="cpu", params={"threshold": 100}),
                   progress=lambda f, m: seen.append((f, m)))
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0
    assert {"preprocess", "segment", "detect", "surfaces", "measure"} <= {m for _, m in seen}
    assert [s.name for s in res.labelmap.segments] == ["Lesion 1", "Lesion 2"]
    assert len(res.boxes) == 2 and set(res.meshes) == {"Segment_1", "Segment_2"}
    assert set(res.timings) >= {"preprocess", "segment", "map_back", "detect", "surfaces", "measure"}
    # biggest first
    assert res.measurements["Segment_1"]["voxel_count"] == 6 * 8 * 10
    assert res.measurements["Segment_2"]["voxel_count"] == 5 * 7 * 10


@pytest.mark.parametrize("cancel_at", ["preprocess", "segment", "surfaces"])
def test_cancel_between_stages(cancel_at):
    token = CancelToken()

    def progress(f, m):
        if m == cancel_at:
            token.cancel()

    with pytest.raises(CancelledError):
        run_task([_blobs()], RunOptions("threshold", device="cpu", params={"threshold": 100}),
                 progress=progress, cancel=token)


def test_wrong_number_of_inputs():
    with pytest.raises(InputError, match="flair"):
        run_task([], RunOptions("mr-brain-tumor", device="cpu"))
    v = _blobs()
    with pytest.raises(InputError, match="got 3 input"):
        run_task([v, v, v], RunOptions("mr-brain-tumor", device="cpu"))


def test_bad_options_named():
    with pytest.raises(InputError, match="smoothing"):
        run_task([_blobs()], RunOptions("threshold", smoothing=2.0))
    with pytest.raises(InputError, match="nope"):
        run_task([_blobs()], RunOptions("threshold", params={"nope": 1}))


def test_same_input_same_output():
    opts = RunOptions("threshold", device="cpu", params={"threshold": 100})
    a = run_task([_blobs()], opts)
    b = run_task([_blobs()], opts)
    np.testing.assert_array_equal(a.labelmap.array, b.labelmap.array)
    for sid in a.meshes:
        assert a.meshes[sid].GetNumberOfPoints() == b.meshes[sid].GetNumberOfPoints()
