"""numba's on-disk cache of the kernels: a damaged entry is compiled again with a one-line notice,
never a traceback (kernels/cpu.py, _load_or_recompile). Each case runs in a fresh process with a cache
folder of its own."""
import os
import subprocess
import sys

import pytest

# one small cached kernel, called with the same types every run
PROGRAM = "import numpy as np; from kernels import cpu; x = np.ones(5, np.float32); cpu.relu_forward(x, x)"


def run(cache_dir):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    return subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, timeout=300)


def cache_files(cache_dir, suffix):
    return sorted(p for p in cache_dir.rglob(f"cpu.relu_forward-*{suffix}"))


@pytest.mark.parametrize("damaged", [".nbc", ".nbi"])  # the compiled code, the index of entries
def test_a_truncated_cache_file_is_compiled_again_with_a_notice(tmp_path, damaged):
    assert run(tmp_path).returncode == 0
    [path] = cache_files(tmp_path, damaged)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])

    second = run(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "Traceback" not in second.stderr
    [notice] = [line for line in second.stderr.splitlines() if line.startswith("numba: ")]
    assert notice.startswith("numba: the cached relu_forward in ") and notice.endswith("compiling it again")

    third = run(tmp_path)  # the entry compiled in the second run was saved whole
    assert third.returncode == 0 and "numba: " not in third.stderr, third.stderr
