"""What a run leaves on disk (fastnn/checkpoint.py): weights.npz in the original program's layout and
history.json, and a clear one-line error for every kind of broken file."""
import numpy as np
import pytest

from fastnn import checkpoint
from fastnn.bundles import Layers, OptimizerState
from fastnn.fileio import FastnnError
from tests.helpers import arrays as each_array


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


def test_a_layer_of_one_unit_keeps_its_bias_vector(tmp_path):
    np.savez(tmp_path / "w.npz", W1=np.ones((3, 1)), b1=np.zeros(1))  # b1 (1,): not a (1, n) row bias
    assert checkpoint.read_weights(tmp_path / "w.npz").biases[0].shape == (1,)


@pytest.mark.parametrize("arrays, message", [
    ({"W1": np.zeros((3, 2))}, "expected arrays ['W1', 'b1'], found ['W1']"),
    ({"x": np.zeros(2)}, "expected arrays ['W1', 'b1', '...'], found ['x']"),
    ({"W1": np.zeros((3, 2)), "b1": np.zeros(5)}, "W1 (3, 2) and b1 (5,) must be float arrays"),
    ({"W1": np.zeros((3, 2)), "b1": np.zeros(2, np.int64)}, "must be float arrays"),
    ({"W1": np.zeros((3, 2), np.int64), "b1": np.zeros(2)}, "must be float arrays"),
    ({"W1": np.zeros((3, 2)), "b1": np.zeros(2), "W2": np.zeros((4, 2)), "b2": np.zeros(2)},
     "W2 has 4 inputs but layer 1 has 2 outputs"),
    ({"W1": np.full((3, 2), np.nan), "b1": np.zeros(2)}, "W1 or b1 holds NaN or inf"),
])
def test_bad_weights_files_are_rejected_clearly(tmp_path, arrays, message):
    np.savez(tmp_path / "w.npz", **arrays)
    with pytest.raises(FastnnError) as info:
        checkpoint.read_weights(tmp_path / "w.npz")
    assert message in str(info.value)


def test_non_npz_and_missing_weights_files(tmp_path):
    (tmp_path / "w.npz").write_text("not a zip")
    with pytest.raises(FastnnError, match="not a readable weights .npz") as info:
        checkpoint.read_weights(tmp_path / "w.npz")
    assert str(info.value).endswith("; pass the weights.npz that fastnn.train wrote")
    np.save(tmp_path / "w.npy", np.zeros((3, 2)))
    with pytest.raises(FastnnError, match="a single .npy array, not a weights .npz"):
        checkpoint.read_weights(tmp_path / "w.npy")
    with pytest.raises(FastnnError, match="not a readable weights .npz"):
        checkpoint.read_weights(tmp_path)  # a folder
    with pytest.raises(FastnnError, match="no such weights file"):
        checkpoint.read_weights(tmp_path / "missing.npz")
    np.savez(tmp_path / "obj.npz", W1=np.array([object()]), b1=np.zeros(1))
    with pytest.raises(FastnnError, match="not a readable weights"):  # pickled arrays are refused
        checkpoint.read_weights(tmp_path / "obj.npz")


def test_history_round_trip_and_absence(tmp_path):
    assert checkpoint.read_history(tmp_path / "weights.npz") == []
    epochs = [{"epoch": 1, "loss": 0.5, "train_accuracy": 0.8}, {"epoch": 2, "loss": 0.25, "train_accuracy": 0.9}]
    checkpoint.write_history(tmp_path / checkpoint.HISTORY, {"hidden": [8]}, epochs)
    assert checkpoint.read_history(tmp_path / "weights.npz") == epochs
    # written for people too: indented by two spaces, one field per line
    assert (tmp_path / checkpoint.HISTORY).read_text().startswith('{\n  "config": {\n    "hidden": [\n      8')


@pytest.mark.parametrize("content", [
    "{not json", '{"config": {}}', '{"epochs": [1, 2]}', "[1, 2]", '{"epochs": {"loss": 1}}',
    '{"epochs": [{"loss": 0.5}]}',  # a foreign record: no epoch number or accuracy
    '{"epochs": [{"epoch": 2, "loss": 0.5, "train_accuracy": 0.9}]}',  # numbered from 2
])
def test_a_broken_history_is_one_clear_line(tmp_path, content):
    (tmp_path / checkpoint.HISTORY).write_text(content)
    with pytest.raises(FastnnError, match="history.json.*move it away") as info:
        checkpoint.read_history(tmp_path / "weights.npz")
    assert "\n" not in str(info.value)
    cause = {'{"epochs": {"loss": 1}}': "(the epoch records are not a list)",
             '{"epochs": [{"loss": 0.5}]}': "(record 1 is not epoch 1 with epoch, loss, train_accuracy)"}
    assert cause.get(content, "") in str(info.value)


def run_state(history_length=2, best=None):
    moment1 = Layers((np.full((3, 2), 0.5, np.float32),), (np.arange(2, dtype=np.float32),))
    moment2 = Layers((np.full((3, 2), 0.25, np.float32),), (np.arange(2, dtype=np.float32) ** 2,))
    history = [{"epoch": e, "loss": 1.0 / e, "train_accuracy": 0.5} for e in range(1, history_length + 1)]
    rng = np.random.default_rng(7)
    rng.permutation(10)
    return checkpoint.RunState(first_epoch=1, epochs=5, done=history_length,
                               optimizer=OptimizerState(moment1, moment2), rng_state=rng.bit_generator.state,
                               settings={"lr": 0.1, "seed": 7}, history=history, weights_sha256="ab" * 32, best=best)


@pytest.mark.parametrize("with_best", [False, True])
def test_run_state_round_trip_without_pickle(tmp_path, with_best):
    params = Layers((np.ones((3, 2), np.float32),), (np.zeros(2, np.float32),))
    state = run_state(best=params if with_best else None)
    checkpoint.write_weights(tmp_path / "weights.npz", params, state)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train_state.npz", "weights.npz"]
    with np.load(tmp_path / checkpoint.STATE, allow_pickle=False) as npz:  # no object arrays inside
        assert sorted(npz.files) == sorted(["S1", "V1", "meta", "sb1", "vb1"] + (["BW1", "Bb1"] if with_best else []))
    loaded = checkpoint.read_state(tmp_path / "weights.npz")
    for got, want in zip([*each_array(loaded.optimizer), *each_array(loaded.best)],
                         [*each_array(state.optimizer), *each_array(state.best)], strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype
    assert (loaded.best is None) == (not with_best)
    assert loaded._replace(optimizer=None, best=None) == state._replace(optimizer=None, best=None)
    rng = np.random.default_rng()
    rng.bit_generator.state = loaded.rng_state  # the 128-bit PCG64 state survives JSON
    expected = np.random.default_rng(7)
    expected.permutation(10)
    assert (rng.permutation(10) == expected.permutation(10)).all()
    assert checkpoint.read_state(tmp_path / "elsewhere" / "weights.npz") is None


@pytest.mark.parametrize("damage", ["not an npz", "foreign meta", "inconsistent progress"])
def test_a_broken_run_state_is_one_clear_line(tmp_path, damage):
    path = tmp_path / checkpoint.STATE
    if damage == "not an npz":
        path.write_text("PK but not really")
    elif damage == "foreign meta":
        np.savez(path, V1=np.zeros((3, 2)), vb1=np.zeros(2), meta=np.array('{"epochs": 3}'))
    else:
        params = Layers((np.ones((3, 2), np.float32),), (np.zeros(2, np.float32),))
        checkpoint.write_weights(tmp_path / "weights.npz", params, run_state()._replace(done=4))  # 2 records
    with pytest.raises(FastnnError, match="train_state.npz.*move it away") as info:
        checkpoint.read_state(tmp_path / "weights.npz")
    assert "\n" not in str(info.value)
    says = {"not an npz": "not a readable train state .npz file", "foreign meta": "not a train state written by",
            "inconsistent progress": "(inconsistent run progress)"}
    assert says[damage] in str(info.value)


def test_a_failed_save_leaves_the_previous_pair_whole(tmp_path):
    params = Layers((np.ones((3, 2), np.float32),), (np.zeros(2, np.float32),))
    checkpoint.write_weights(tmp_path / "weights.npz", params, run_state())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    unwritable = run_state()._replace(settings={"lr": object()})  # json.dumps fails mid-save
    with pytest.raises(TypeError):
        checkpoint.write_weights(tmp_path / "weights.npz", params._replace(biases=(np.ones(2, np.float32),)),
                                 unwritable)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file, nothing replaced
