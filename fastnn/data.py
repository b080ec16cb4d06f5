"""IDX datasets: MNIST (bundled with the package) and Fashion-MNIST (read from a folder or downloaded once).

    from fastnn.data import load_dataset
    data = load_dataset("mnist")  # data.train_images (60000, 784) uint8, data.train_labels (60000,) uint8

Every file is checked twice: its structure (IDX header, payload length, intact gzip stream) and its
SHA-256 against the table pinned below. Any problem is a FastnnError naming the file and what to do.
N = number of images, H = W = 28 pixels.
"""
import dataclasses
import gzip
import hashlib
import http.client
import math
import os
import sys
import urllib.request
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fastnn.fileio import FastnnError, atomic_write

BUNDLED = Path(__file__).parent / "datasets" / "mnist"  # the four MNIST files ship with the package

# field of Dataset -> file name without ".gz" (the same four names in both datasets)
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

# file -> (SHA-256 of the published .gz, SHA-256 of its decompressed IDX), so a raw file verifies too
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                                    "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"),
        "train-labels-idx1-ubyte": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                    "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"),
        "t10k-images-idx3-ubyte": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                                   "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"),
        "t10k-labels-idx1-ubyte": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                                   "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": ("3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                                    "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
        "train-labels-idx1-ubyte": ("a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                                    "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
        "t10k-images-idx3-ubyte": ("346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                                   "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
        "t10k-labels-idx1-ubyte": ("67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                                   "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
    },
}

# tried in order; each serves the four .gz files under their canonical names
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

CLASSES = {
    "mnist": tuple(str(digit) for digit in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
}

GZIP_MAGIC = b"\x1f\x8b"
IDX_MAGIC = {0x00000801: "labels", 0x00000803: "images"}  # 0x08 = unsigned byte, then the number of dims
GET_FILES = "pass --data-dir DIR holding the four IDX files"


@dataclasses.dataclass(frozen=True, eq=False)  # eq=False: == on arrays has no single truth value
class Dataset:
    """One dataset in memory. Images are flattened and stay uint8 (47 MB, not 188 MB as float32)."""
    name: str
    train_images: np.ndarray  # (60000, 784) uint8, grey levels 0..255
    train_labels: np.ndarray  # (60000,) uint8, 0..9
    test_images: np.ndarray  # (10000, 784) uint8
    test_labels: np.ndarray  # (10000,) uint8
    classes: tuple  # class names, indexed by label


def cache_dir(name):
    """Where downloads of dataset `name` go: $FASTNN_DATA_DIR/<name>, else $XDG_CACHE_HOME/fastnn/<name>
    or ~/.cache/fastnn/<name>."""
    if os.environ.get("FASTNN_DATA_DIR"):
        return Path(os.environ["FASTNN_DATA_DIR"]) / name
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastnn" / name


def _remedy(path):
    """What the user should do about a damaged file."""
    if Path(path).resolve().parent == BUNDLED.resolve():
        return f"the bundled copy is damaged: reinstall fastnn, or {GET_FILES}"
    return "delete it and run again to re-download it"


def read_idx(path):
    """Read an IDX file of unsigned bytes, gzipped or raw.

    Parameters
    ----------
    path : str or Path
        The file. Gzip is recognised by its magic bytes (1f 8b), not by the name.

    Returns
    -------
    numpy.ndarray
        uint8, shaped as the header says: (N,) for labels, (N, H, W) for images.

    Raises
    ------
    FastnnError
        If the gzip stream is damaged or truncated, the magic number is not 0x00000801 or 0x00000803,
        or the payload is not exactly as long as the header's dimensions say.
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


def _read_bytes(path):
    try:
        return path.read_bytes()
    except OSError as e:
        raise FastnnError(f"cannot read {path}: {e.strerror}") from None


def _parse_idx(data, path):
    """read_idx on the bytes of `path`, already read (load_dataset also hashes them)."""
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)  # also checks the stream's CRC and length trailer
        except (EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise FastnnError(f"{path}: truncated or damaged gzip data ({e}): {_remedy(path)}") from None
    ndim = data[3] if len(data) >= 4 else 0
    header = 4 + 4 * ndim  # magic 0x000008<ndim>, then one big-endian uint32 per dimension
    if len(data) < header:
        raise FastnnError(f"{path}: truncated inside the IDX header ({len(data)} bytes): {_remedy(path)}")
    magic = int.from_bytes(data[:4], "big")
    if magic not in IDX_MAGIC:
        raise FastnnError(f"{path}: not an IDX file of labels or images (magic number 0x{magic:08x}, "
                          f"expected 0x00000801 or 0x00000803): {_remedy(path)}")
    dims = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != math.prod(dims):
        raise FastnnError(f"{path}: the header says {dims} = {math.prod(dims)} bytes of data but the file "
                          f"holds {len(data) - header} (truncated or damaged): {_remedy(path)}")
    # copy: frombuffer over bytes is read-only, and the kernels want ordinary writable arrays
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _open_url(url):
    """Open `url` for reading: the one place that touches the network (tests replace it)."""
    return urllib.request.urlopen(url, timeout=60)


def _download(name, filename, path):
    """Fetch `filename` (a .gz) of dataset `name` into `path`, trying each mirror in turn.

    The bytes stream into a temporary file beside `path` and are hashed on the way; only a file whose
    SHA-256 matches the pinned one is renamed onto `path`, so a failed download leaves nothing behind.
    """
    expected = SHA256[name][filename.removesuffix(".gz")][0]
    failures = []
    for mirror in MIRRORS[name]:
        url = mirror + filename
        try:
            with _open_url(url) as response, atomic_write(path) as f, \
                    tqdm(total=getattr(response, "length", None),  # HTTP responses know their size
                         unit="B", unit_scale=True, desc=filename, disable=not sys.stderr.isatty()) as bar:
                digest = hashlib.sha256()
                while chunk := response.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
                if digest.hexdigest() != expected:  # raising inside atomic_write removes the temp file
                    raise FastnnError("SHA-256 mismatch, not the original file")
            return path
        except (OSError, http.client.HTTPException, FastnnError) as e:  # URLError is an OSError
            failures.append(f"{url}: {e}")
    raise FastnnError(f"could not download {path} ({'; '.join(failures)}): check the network, or {GET_FILES}")


def _find_or_download(name, stem, folders, download):
    """The path of file `stem` (.gz or raw) in the first folder holding it, else downloaded into the last."""
    for folder in folders:
        for path in (folder / f"{stem}.gz", folder / stem):
            if path.is_file():
                return path
    target = folders[-1] / f"{stem}.gz"
    if not download:
        raise FastnnError(f"{target} not found (nor {stem} unzipped) and downloading is off: {GET_FILES}")
    return _download(name, target.name, target)


def _read_verified(path, name, stem):
    """read_idx(path), then its SHA-256 checked against the pinned .gz or IDX digest of `stem`."""
    data = _read_bytes(path)
    array = _parse_idx(data, path)  # first, so a truncated file is reported as truncated
    if hashlib.sha256(data).hexdigest() not in SHA256[name][stem]:
        raise FastnnError(f"{path}: SHA-256 does not match the original {name} file "
                          f"(damaged, or another dataset's): {_remedy(path)}")
    return array


def load_dataset(name="mnist", data_dir=None, download=True):
    """Load a dataset's training and test sets, verified against pinned SHA-256 checksums.

    Parameters
    ----------
    name : {"mnist", "fashion-mnist"}
    data_dir : str or Path, optional
        Folder holding the four IDX files, each gzipped (``*.gz``) or raw. By default MNIST is read
        from the copy bundled with fastnn, and Fashion-MNIST from `cache_dir(name)`.
    download : bool
        Fetch missing files from the public mirrors into `data_dir` (or the cache directory).

    Returns
    -------
    Dataset
        Images (N, 784) uint8, labels (N,) uint8 in 0..9, and the class names.

    Raises
    ------
    FastnnError
        If `name` is unknown, or a file is missing (and cannot be downloaded), truncated, damaged or
        not the original; the message names the file and says what to do.
    """
    if name not in SHA256:
        raise FastnnError(f"The 'name' parameter of load_dataset must be one of {sorted(SHA256)}. "
                          f"Got {name!r} instead.")
    if data_dir is not None:
        folders = [Path(data_dir)]
    elif name == "mnist":  # the bundled copy; the cache only if the package was installed without it
        folders = [BUNDLED, cache_dir(name)]
    else:
        folders = [cache_dir(name)]
    arrays = {}
    for field, stem in FILES.items():
        path = _find_or_download(name, stem, folders, download)
        arrays[field] = _read_verified(path, name, stem)

    # Files that pass their checksums always pass these; they state what the rest of fastnn relies on.
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]  # (N, H, W), (N,)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise FastnnError(f"{name} {split}: images {images.shape} do not match labels {labels.shape}: "
                              f"{GET_FILES}")
        if labels.max(initial=0) >= len(CLASSES[name]):
            raise FastnnError(f"{name} {split}: label {labels.max()} is outside 0..{len(CLASSES[name]) - 1}: "
                              f"{GET_FILES}")
        arrays[f"{split}_images"] = images.reshape(len(images), -1)  # (N, H*W), a view
    return Dataset(name=name, classes=CLASSES[name], **arrays)
