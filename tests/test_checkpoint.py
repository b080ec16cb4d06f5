"""What a run leaves on disk (fastnn/checkpoint.py): weights.npz in the original program's layout and
history.json, and a clear one-line error for every kind of broken file."""
import numpy as np
import pytest

from fastnn import checkpoint
from fastnn.fileio import FastnnError
from fastnn.step import Layers


def test_weights_round_trip_in_the_original_layout(tmp_path):
    params = Layers((np.ones((3, 2), np.float32), np.full((2, 4), 2.0, np.float32)),
                    (np.zeros(2, np.float32), np.arange(4, dtype=np.float32)))
    checkpoint.write_weights(tmp_path / "w.npz", params)
    with np.load(tmp_path / "w.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["W1", "W2", "b1", "b2"]
    loaded = checkpoint.read_weights(tmp_path / "w.npz")
    for got, want in zip(loaded.weights + loaded.biases, params.weights + params.biases):
        np.testing.assert_array_equal(got, want)
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"]  # no temp file left behind


def test_the_original_programs_row_biases_are_read_as_vectors(tmp_path):
    np.savez(tmp_path / "w.npz", W1=np.ones((3, 2)), b1=np.zeros((1, 2)))
    assert checkpoint.read_weights(tmp_path / "w.npz").biases[0].shape == (2,)


@pytest.mark.parametrize("arrays, message", [
    ({"W1": np.zeros((3, 2))}, "expected arrays"),
    ({"W1": np.zeros((3, 2)), "b1": np.zeros(5)}, "must be float arrays"),
    ({"W1": np.zeros((3, 2)), "b1": np.zeros(2), "W2": np.zeros((4, 2)), "b2": np.zeros(2)}, "W2 has 4 inputs"),
    ({"W1": np.full((3, 2), np.nan), "b1": np.zeros(2)}, "NaN or inf"),
])
def test_bad_weights_files_are_rejected_clearly(tmp_path, arrays, message):
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(FastnnError, match=message):
        checkpoint.read_weights(tmp_path / "w.npz")


def test_non_npz_and_missing_weights_files(tmp_path):
    (tmp_path / "w.npz").write_text("not a zip")
    with pytest.raises(FastnnError, match="not a readable weights .npz"):
        checkpoint.read_weights(tmp_path / "w.npz")
    with pytest.raises(FastnnError, match="no such weights file"):
        checkpoint.read_weights(tmp_path / "missing.npz")
    np.savez(tmp_path / "obj.npz", W1=np.array([object()]), b1=np.zeros(1))
    with pytest.raises(FastnnError, match="not a readable weights"):  # pickled arrays are refused
        checkpoint.read_weights(tmp_path / "obj.npz")


def test_history_round_trip_and_absence(tmp_path):
    assert checkpoint.read_history(tmp_path / "weights.npz") == []
    epochs = [{"epoch": 1, "loss": 0.5}, {"epoch": 2, "loss": 0.25}]
    checkpoint.write_history(tmp_path / checkpoint.HISTORY, {"hidden": [8]}, epochs)
    assert checkpoint.read_history(tmp_path / "weights.npz") == epochs


@pytest.mark.parametrize("content", ["{not json", '{"config": {}}', '{"epochs": [1, 2]}'])
def test_a_broken_history_is_one_clear_line(tmp_path, content):
    (tmp_path / checkpoint.HISTORY).write_text(content)
    with pytest.raises(FastnnError, match="history.json.*move it away") as info:
        checkpoint.read_history(tmp_path / "weights.npz")
    assert "\n" not in str(info.value)
