"""The accuracies the README states, trained for real on all of MNIST: `uv run pytest -m slow` (a few
minutes; the default run leaves them out)."""
import pytest

from fastnn import train
from fastnn.backends import CPU_BACKENDS

pytestmark = pytest.mark.slow

SEED_ACCURACY = 0.9382  # what the original program this project grew from reached (784-128-10, 10 epochs)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_default_preset_reaches_98_percent(backend, tmp_path):
    result = train.main(["--backend", backend, "--no-plots", "--out", str(tmp_path)])
    assert result["test_accuracy"] >= 0.98


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_the_seed_preset_matches_the_original_program(backend, tmp_path):
    result = train.main(["--preset", "seed", "--backend", backend, "--no-plots", "--out", str(tmp_path)])
    assert abs(result["test_accuracy"] - SEED_ACCURACY) <= 0.005


def test_the_best_preset_reaches_98_8_percent(tmp_path):
    """Adam, dropout on the pixels and the hidden layers, max-norm: about 8 minutes on 2 cores."""
    result = train.main(["--preset", "best", "--backend", "numba", "--no-plots", "--out", str(tmp_path)])
    assert result["test_accuracy"] >= 0.988
