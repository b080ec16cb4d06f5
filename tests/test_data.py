"""fastnn.data: the bundled files are the originals, IDX parsing catches every kind of damage, and
downloads are verified before they land. No test touches the network: the URL opener is replaced."""
import gzip
import hashlib
import io
import re
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from fastnn import data
from fastnn.data import BUNDLED, FILES, SHA256, load_dataset, read_idx
from fastnn.fileio import FastnnError

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def idx_bytes(array, magic=None, dims=None):
    """An IDX file's bytes for uint8 `array`; magic and dims may be forced wrong."""
    magic = (0x800 + array.ndim) if magic is None else magic
    dims = array.shape if dims is None else dims
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + array.astype(np.uint8).tobytes()


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def link_files(folder, source, stems):
    """Symlink source/<stem>.gz into folder for each stem (cheaper than copying 10 MB)."""
    for stem in stems:
        (folder / f"{stem}.gz").symlink_to(source / f"{stem}.gz")


def fake_opener(folder, failing=(), corrupt=False):
    """A stand-in for data._open_url serving folder/<file name>; URLs starting with `failing` fail."""
    urls = []

    def open_url(url):
        urls.append(url)
        if url.startswith(failing):
            raise urllib.error.URLError("unreachable")
        content = (folder / url.rsplit("/", 1)[1]).read_bytes()
        return io.BytesIO(flip(content, len(content) // 2) if corrupt else content)
    return open_url, urls


# ---- the files are the originals ---------------------------------------------------------------

def test_bundled_files_match_the_pinned_table():
    for stem in FILES.values():
        assert sha256(BUNDLED / f"{stem}.gz") == SHA256["mnist"][stem][0]


def test_pinned_idx_digests_are_those_of_the_decompressed_files():
    for stem, (_, idx_digest) in SHA256["mnist"].items():
        content = gzip.decompress((BUNDLED / f"{stem}.gz").read_bytes())
        assert hashlib.sha256(content).hexdigest() == idx_digest, stem


def write_tiny_dataset(folder, labels=(3, 1, 4, 1, 5)):
    """The four IDX files of a tiny dataset in `folder` (five images each split, gzipped), and a table
    of their digests in SHA256's format, to pin in place of a real dataset's."""
    folder.mkdir(parents=True, exist_ok=True)
    images = np.arange(len(labels) * 28 * 28).reshape(len(labels), 28, 28) % 256
    for split in ("train", "test"):
        (folder / f"{FILES[f'{split}_images']}.gz").write_bytes(gzip.compress(idx_bytes(images)))
        (folder / f"{FILES[f'{split}_labels']}.gz").write_bytes(gzip.compress(idx_bytes(np.array(labels))))
    return {stem: (sha256(folder / f"{stem}.gz"), "") for stem in FILES.values()}


# ---- loading ------------------------------------------------------------------------------------

def test_load_mnist_shapes_dtypes_and_label_counts(mnist):
    assert mnist.name == "mnist" and mnist.classes == tuple("0123456789")
    assert mnist.train_images.shape == (60000, 784) and mnist.train_images.dtype == np.uint8
    assert mnist.test_images.shape == (10000, 784) and mnist.test_images.dtype == np.uint8
    assert mnist.train_labels.shape == (60000,) and mnist.train_labels.dtype == np.uint8
    assert mnist.test_labels.shape == (10000,) and mnist.test_labels.dtype == np.uint8
    assert np.bincount(mnist.train_labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.test_labels).tolist() == MNIST_TEST_COUNTS
    assert mnist.train_images.max() == 255 and mnist.train_images.min() == 0


def test_raw_files_read_and_verify_like_gz(tmp_path, mnist):
    for stem in (FILES["test_images"], FILES["test_labels"]):
        (tmp_path / stem).write_bytes(gzip.decompress((BUNDLED / f"{stem}.gz").read_bytes()))
        np.testing.assert_array_equal(read_idx(tmp_path / stem), read_idx(BUNDLED / f"{stem}.gz"))
    link_files(tmp_path, BUNDLED, (FILES["train_images"], FILES["train_labels"]))
    mixed = load_dataset("mnist", data_dir=tmp_path, download=False)  # train gz, test raw
    np.testing.assert_array_equal(mixed.test_images, mnist.test_images)
    np.testing.assert_array_equal(mixed.test_labels, mnist.test_labels)


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    (tmp_path / "labels.idx").write_bytes(gzip.compress(idx_bytes(labels)))
    (tmp_path / "labels.gz").write_bytes(idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.idx"), labels)
    np.testing.assert_array_equal(read_idx(tmp_path / "labels.gz"), labels)


def test_fashion_mnist_from_data_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(SHA256, "fashion-mnist", write_tiny_dataset(tmp_path))
    fashion = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert fashion.classes[0] == "T-shirt/top" and len(fashion.classes) == 10
    assert fashion.train_images.shape == (5, 784) and fashion.test_labels.tolist() == [3, 1, 4, 1, 5]


def test_unknown_dataset_names_the_choices():
    with pytest.raises(FastnnError, match=r"must be one of \['fashion-mnist', 'mnist'\]. Got 'cifar' instead"):
        load_dataset("cifar")


# ---- damaged files: one FastnnError line naming the file ----------------------------------------

def flip(content, i):
    """`content` with the bits of byte i inverted."""
    content = bytearray(content)
    content[i] ^= 0xFF
    return bytes(content)


IMAGES = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256  # (2, 28, 28), synthetic

BROKEN = {
    "truncated raw": lambda: idx_bytes(IMAGES)[:-100],
    "truncated gz": lambda: gzip.compress(idx_bytes(IMAGES))[:-20],
    "damaged gz": lambda: gzip.compress(idx_bytes(IMAGES))[:10] + b"\xff" * 50,  # invalid deflate block
    "bad gz crc": lambda: flip(gzip.compress(idx_bytes(IMAGES)), -8),
    "truncated header": lambda: idx_bytes(IMAGES)[:10],
    "two bytes": lambda: b"\x00\x00",  # too short to hold the byte that says how many dimensions follow
    "magic only": lambda: idx_bytes(IMAGES)[:4],
    "wrong magic": lambda: idx_bytes(IMAGES, magic=0x00000903),  # 0x09: signed bytes
    "wrong count": lambda: idx_bytes(IMAGES, dims=(3, 28, 28)),
    "trailing bytes": lambda: idx_bytes(IMAGES) + b"\x00",
}


# what the one line says of each damage, besides the file and the remedy
SAYS = {"truncated raw": "the header says (2, 28, 28) = 1568 bytes of data but the file holds 1468",
        "trailing bytes": "holds 1569", "wrong count": "(3, 28, 28) = 2352 bytes of data but the file holds 1568",
        "two bytes": "truncated inside the IDX header (2 bytes)", "magic only": "truncated inside the IDX header (4 bytes)",
        "truncated header": "truncated inside the IDX header (10 bytes)", "wrong magic": "magic number 0x00000903"}


@pytest.mark.parametrize("kind", BROKEN)
def test_damaged_idx_file_raises_one_line_naming_it(tmp_path, kind):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(BROKEN[kind]())
    with pytest.raises(FastnnError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    assert "delete it and run again" in message
    assert SAYS.get(kind, "") in message


def test_an_idx_file_of_no_items_reads_as_empty(tmp_path):
    (tmp_path / "labels").write_bytes(idx_bytes(np.zeros(0, np.uint8)))  # a header and nothing after it
    assert read_idx(tmp_path / "labels").shape == (0,)


def test_an_unreadable_file_is_one_line(tmp_path):
    with pytest.raises(FastnnError, match=rf"cannot read {tmp_path}: Is a directory"):
        read_idx(tmp_path)


def test_a_damaged_file_in_a_data_dir_is_named(tmp_path):
    link_files(tmp_path, BUNDLED, [stem for stem in FILES.values() if stem != FILES["test_labels"]])
    (tmp_path / FILES["test_labels"]).write_bytes(idx_bytes(np.zeros(10, np.uint8))[:-1])
    with pytest.raises(FastnnError, match=rf"^{tmp_path / FILES['test_labels']}: the header says \(10,\)"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_flipped_byte_fails_the_checksum(tmp_path):
    stem = FILES["train_labels"]
    labels = bytearray(gzip.decompress((BUNDLED / f"{stem}.gz").read_bytes()))
    labels[8] = (labels[8] + 1) % 10  # still a valid label: only the checksum can tell
    (tmp_path / stem).write_bytes(labels)
    link_files(tmp_path, BUNDLED, (FILES["train_images"],))
    assert read_idx(tmp_path / stem).shape == (60000,)
    with pytest.raises(FastnnError, match=rf"{tmp_path / stem}: SHA-256 does not match .* delete it"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("split, n_labels, top_label", [("train", 4, 9), ("test", 5, 10)])
def test_images_and_labels_must_agree(tmp_path, monkeypatch, split, n_labels, top_label):
    # A tiny dataset whose digests are pinned in place of MNIST's, to reach the checks after the checksums.
    sets = {"train": (5, 5, 9), "test": (5, 5, 9)}
    sets[split] = (5, n_labels, top_label)
    for part, (n_images, n, top) in sets.items():
        idx_path = tmp_path / FILES[f"{part}_images"]
        idx_path.write_bytes(idx_bytes(np.zeros((n_images, 28, 28), np.uint8)))
        label_path = tmp_path / FILES[f"{part}_labels"]
        label_path.write_bytes(idx_bytes(np.linspace(0, top, n).astype(np.uint8)))
    monkeypatch.setitem(SHA256, "mnist", {stem: ("", sha256(tmp_path / stem)) for stem in FILES.values()})
    says = "images (5, 28, 28) do not match labels (4,)" if n_labels == 4 else "label 10 is outside 0..9"
    with pytest.raises(FastnnError, match=rf"mnist {split}: {re.escape(says)}: pass --data-dir DIR"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


# ---- downloads ----------------------------------------------------------------------------------

def test_download_tries_mirrors_in_order_and_verifies(tmp_path, monkeypatch, mnist):
    first, second = data.MIRRORS["mnist"]
    open_url, urls = fake_opener(BUNDLED, failing=first)
    monkeypatch.setattr(data, "_open_url", open_url)
    downloaded = load_dataset("mnist", data_dir=tmp_path / "cache")
    assert urls[:2] == [first + "train-images-idx3-ubyte.gz", second + "train-images-idx3-ubyte.gz"]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(f"{s}.gz" for s in FILES.values())
    for stem in FILES.values():
        assert sha256(tmp_path / "cache" / f"{stem}.gz") == SHA256["mnist"][stem][0]
    np.testing.assert_array_equal(downloaded.train_images, mnist.train_images)


class DropsMidway(io.BytesIO):
    """A response whose connection breaks after the first 1000 bytes."""

    def read(self, size=-1):
        if self.tell() > 0:
            raise ConnectionResetError("connection reset by peer")
        return super().read(1000)


@pytest.mark.parametrize("failure", ["corrupt", "drops midway"])
def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch, failure):
    if failure == "corrupt":
        open_url, _ = fake_opener(BUNDLED, corrupt=True)
    else:
        def open_url(url):
            return DropsMidway(b"\x1f\x8b" * 1000)
    monkeypatch.setattr(data, "_open_url", open_url)
    cache = tmp_path / "cache"
    with pytest.raises(FastnnError) as info:
        load_dataset("mnist", data_dir=cache)
    message = str(info.value)
    assert str(cache / "train-images-idx3-ubyte.gz") in message and "\n" not in message
    assert ("SHA-256 mismatch" if failure == "corrupt" else "connection reset") in message
    assert not cache.exists() or list(cache.iterdir()) == []  # no file, no temp file


def test_all_mirrors_failing(tmp_path, monkeypatch):
    open_url, urls = fake_opener(BUNDLED, failing="http")
    monkeypatch.setattr(data, "_open_url", open_url)
    with pytest.raises(FastnnError, match="could not download .*unreachable.*check the network") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert urls == [mirror + "train-images-idx3-ubyte.gz" for mirror in data.MIRRORS["mnist"]]
    assert all(url in str(info.value) for url in urls)


def test_missing_file_without_download_names_the_cache_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(data, "_open_url", lambda url: pytest.fail("must not download"))
    expected = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    with pytest.raises(FastnnError, match=rf"{expected} not found .*downloading is off: pass --data-dir DIR"):
        load_dataset("fashion-mnist", download=False)


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("FASTNN_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir("fashion-mnist") == tmp_path / "home" / ".cache" / "fastnn" / "fashion-mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.cache_dir("fashion-mnist") == tmp_path / "xdg" / "fastnn" / "fashion-mnist"
    monkeypatch.setenv("FASTNN_DATA_DIR", str(tmp_path / "mine"))
    assert data.cache_dir("fashion-mnist") == tmp_path / "mine" / "fashion-mnist"


def test_fashion_mnist_downloads_are_verified(tmp_path, monkeypatch):
    monkeypatch.setitem(SHA256, "fashion-mnist", write_tiny_dataset(tmp_path / "server"))
    open_url, urls = fake_opener(tmp_path / "server")
    monkeypatch.setattr(data, "_open_url", open_url)
    fashion = load_dataset("fashion-mnist", data_dir=tmp_path / "cache")
    assert urls == [data.MIRRORS["fashion-mnist"][0] + f"{stem}.gz" for stem in FILES.values()]
    assert fashion.train_labels.tolist() == [3, 1, 4, 1, 5]
    open_url, _ = fake_opener(tmp_path / "server", corrupt=True)
    monkeypatch.setattr(data, "_open_url", open_url)
    with pytest.raises(FastnnError, match="SHA-256 mismatch"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists() or list((tmp_path / "elsewhere").iterdir()) == []
