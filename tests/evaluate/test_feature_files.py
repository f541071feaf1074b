"""The files evaluation's features travel in: half precision where it holds the values, and the ranks' files
joined row-wise into a memory-mapped file, block by block, from local folders or object stores."""

import numpy as np
import pytest

from pipeline import storage
from pipeline.evaluate import feature_files
from pipeline.evaluate.feature_files import half_if_fits, join_rows


def test_features_are_stored_in_half_precision_unless_they_overflow_it(caplog):
    x = np.array([[0.1, -3.25, 60000.0]], np.float32)
    assert half_if_fits(x, "codes").dtype == np.float16
    np.testing.assert_allclose(half_if_fits(x, "codes"), x, rtol=2**-11)
    diverged = np.array([[1.0, 7e4]], np.float32)
    assert half_if_fits(diverged, "the encoder's features of train") is diverged
    assert "the encoder's features of train reach beyond float16's range (65,504): kept in float32" in caplog.text


@pytest.mark.parametrize("where", ["local", "memory://joined-test"])
def test_the_ranks_files_join_row_wise_in_blocks_at_the_positions_given(tmp_path, monkeypatch, where):
    """Three ranks' files (one float32: a rank whose features overflowed float16; one empty), read 7 rows at a
    time, land in the rows ``positions`` names, in the dtype they promote to, memory-mapped."""
    monkeypatch.setattr(feature_files, "BLOCK_BYTES", 7 * 4 * 3)
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)).astype(dtype) for n, dtype in ((20, np.float16), (0, np.float16), (9, np.float32))]
    parts[1] = np.zeros((0, 0), np.float64)  # an empty share: the shape and dtype of nothing, which do not count
    folder = str(tmp_path) if where == "local" else where
    sources = []
    for rank, part in enumerate(parts):
        with storage.atomic_writer(folder, f"part-{rank}.npy") as handle:
            np.save(handle, part)
        sources.append(storage.join(folder, f"part-{rank}.npy"))
    positions = rng.permutation(29)
    joined = join_rows(sources, tmp_path / "joined.npy", positions)
    expected = np.empty((29, 3), np.float32)
    expected[positions] = np.concatenate([parts[0], parts[2]])
    assert isinstance(joined, np.memmap) and joined.dtype == np.float32 and joined.shape == (29, 3)
    np.testing.assert_array_equal(joined, expected)
    np.testing.assert_array_equal(join_rows(sources[:1], tmp_path / "first.npy"), parts[0])


def test_a_short_rank_file_is_refused(tmp_path):
    np.save(tmp_path / "whole.npy", np.zeros((10, 4), np.float16))
    data = (tmp_path / "whole.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(data[:-8])
    with pytest.raises(ValueError, match="a rank's features file ends early"):
        join_rows([str(tmp_path / "short.npy")], tmp_path / "joined.npy")
