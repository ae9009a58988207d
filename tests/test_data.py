"""Data loaders: embedded sets, users' on-disk formats, splits, and the mnist5k cache."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import modelseal as ms
from modelseal.data import CLASSIFICATION, REGRESSION, embedded, files
from modelseal.errors import DataError, ModelSealError

RNG = np.random.default_rng(0)


# ------------------------------------------------------------------------------------------ helpers


def write_idx(path: Path, arr: np.ndarray, gz: bool = False) -> Path:
    arr = np.asarray(arr, dtype=np.uint8)
    raw = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_idx(d: Path, prefix: str, n: int, gz: bool = False, h: int = 28, w: int = 28):
    x = RNG.integers(0, 256, (n, h, w), dtype=np.uint8)
    y = RNG.integers(0, 10, n, dtype=np.uint8)
    y[0] = 9  # so num_classes is always 10
    write_idx(d / f"{prefix}-images-idx3-ubyte", x, gz)
    write_idx(d / f"{prefix}-labels-idx1-ubyte", y, gz)
    return x, y


def cifar_records(n: int, nlab: int, classes: int):
    labels = RNG.integers(0, classes, (n, nlab), dtype=np.uint8)
    pixels = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    return labels, pixels, np.concatenate([labels, pixels], axis=1).tobytes()


# ---------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_train_and_test(tmp_path, gz):
    xa, ya = make_idx(tmp_path, "train", 12, gz)
    xb, yb = make_idx(tmp_path, "t10k", 5, gz)
    x, y, meta = files.load_idx(str(tmp_path))
    assert x.shape == (17, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    expect = np.concatenate([xa, xb]).astype(np.float32) / 255.0
    np.testing.assert_allclose(x[:, 0].numpy(), expect)
    assert y.tolist() == np.concatenate([ya, yb]).tolist()
    assert meta.input_shape == (1, 28, 28) and meta.bounds == (0.0, 1.0)
    assert meta.num_classes == 10 and meta.task == CLASSIFICATION
    assert meta.name == f"idx:{tmp_path}"


def test_idx_one_pair_is_enough_and_dotted_names(tmp_path):
    x0 = RNG.integers(0, 256, (4, 5, 7), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images.idx3-ubyte", x0)
    write_idx(tmp_path / "t10k-labels.idx1-ubyte", np.array([0, 1, 2, 1]))
    splits = ms.data.load(f"idx:{tmp_path}", seed=0)
    assert splits.meta.input_shape == (1, 5, 7) and splits.meta.num_classes == 3
    assert sum(len(s) for s in splits[:3]) == 4


def test_idx_truncated_file_names_the_file(tmp_path):
    make_idx(tmp_path, "train", 6)
    p = tmp_path / "train-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        files.load_idx(tmp_path)


def test_idx_truncated_gzip_names_the_file(tmp_path):
    make_idx(tmp_path, "train", 6, gz=True)
    p = tmp_path / "train-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:15])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        files.load_idx(tmp_path)


def test_idx_bad_magic_dtype_and_dims(tmp_path):
    make_idx(tmp_path, "train", 3)
    p = tmp_path / "train-images-idx3-ubyte"
    raw = bytearray(p.read_bytes())
    raw[0] = 7
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="magic"):
        files.load_idx(tmp_path)
    raw[0], raw[2] = 0, 0x0D  # float elements
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="element type 0x0d"):
        files.load_idx(tmp_path)
    write_idx(p, np.zeros((3, 28 * 28)))  # 2-D where 3-D is expected
    with pytest.raises(DataError, match="2 dimensions; expected 3"):
        files.load_idx(tmp_path)


def test_idx_count_mismatch_and_missing_half(tmp_path):
    make_idx(tmp_path, "train", 4)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3))
    with pytest.raises(DataError, match="4 images.*3 labels"):
        files.load_idx(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="no train-labels-idx1-ubyte"):
        files.load_idx(tmp_path)


def test_idx_empty_or_missing_directory(tmp_path):
    with pytest.raises(DataError, match="no IDX files"):
        files.load_idx(tmp_path)
    with pytest.raises(DataError, match="no such directory"):
        files.load_idx(tmp_path / "nope")


def test_idx_without_path_errors():
    with pytest.raises(DataError, match="needs a path.*idx:PATH"):
        ms.data.load("idx")
    with pytest.raises(DataError, match="needs a path"):
        ms.data.load("idx:")


def test_unknown_option_is_a_data_error(tmp_path):
    make_idx(tmp_path, "train", 3)
    with pytest.raises(DataError, match="unknown option.*bogus"):
        ms.data.load(f"idx:{tmp_path}", bogus=1)


# -------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_binary_round_trip(tmp_path):
    parts = []
    for name, n in [("data_batch_1.bin", 4), ("data_batch_2.bin", 3), ("test_batch.bin", 2)]:
        labels, pixels, raw = cifar_records(n, 1, 10)
        (tmp_path / name).write_bytes(raw)
        parts.append((labels, pixels))
    (tmp_path / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    x, y, meta = files.load_cifar10(tmp_path)
    assert x.shape == (9, 3, 32, 32) and x.dtype == torch.float32
    pixels = np.concatenate([p for _, p in parts]).reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(x.numpy(), pixels.astype(np.float32) / 255.0)
    assert y.tolist() == np.concatenate([lab[:, 0] for lab, _ in parts]).tolist()
    assert meta.num_classes == 10 and meta.input_shape == (3, 32, 32) and meta.name == f"cifar10:{tmp_path}"
    assert meta.extra["classes"] == [f"c{i}" for i in range(10)]


def test_cifar10_finds_the_binary_archive_subfolder(tmp_path):
    sub = tmp_path / "cifar-10-batches-bin"
    sub.mkdir()
    (sub / "test_batch.bin").write_bytes(cifar_records(3, 1, 10)[2])
    splits = ms.data.load(f"cifar10:{tmp_path}")
    assert splits.meta.num_classes == 10 and sum(len(s) for s in splits[:3]) == 3


def test_cifar100_binary_uses_fine_labels(tmp_path):
    labels_a, pixels_a, raw_a = cifar_records(5, 2, 20)
    labels_a[:, 1] = [0, 99, 50, 7, 3]
    raw_a = np.concatenate([labels_a, pixels_a], axis=1).tobytes()
    (tmp_path / "train.bin").write_bytes(raw_a)
    labels_b, pixels_b, raw_b = cifar_records(2, 2, 20)
    (tmp_path / "test.bin").write_bytes(raw_b)
    x, y, meta = files.load_cifar100(tmp_path)
    assert x.shape == (7, 3, 32, 32) and meta.num_classes == 100
    assert y.tolist() == [0, 99, 50, 7, 3] + labels_b[:, 1].tolist()
    np.testing.assert_allclose(x[:5].numpy(), pixels_a.reshape(-1, 3, 32, 32) / np.float32(255.0))


def test_cifar_truncated_batch_names_the_file(tmp_path):
    (tmp_path / "data_batch_1.bin").write_bytes(cifar_records(2, 1, 10)[2][:-1])
    with pytest.raises(DataError, match="data_batch_1.bin.*3073-byte record"):
        files.load_cifar10(tmp_path)


def test_cifar_label_out_of_range(tmp_path):
    labels, pixels, _ = cifar_records(2, 1, 10)
    labels[1] = 42
    (tmp_path / "test_batch.bin").write_bytes(np.concatenate([labels, pixels], axis=1).tobytes())
    with pytest.raises(DataError, match="label 42"):
        files.load_cifar10(tmp_path)


@pytest.mark.parametrize("kind,layout", [
    ("cifar10", ["data_batch_1", "test_batch", "batches.meta"]),
    ("cifar10", ["cifar-10-batches-py/data_batch_1"]),
    ("cifar100", ["train", "test", "meta"]),
    ("cifar100", ["cifar-100-python/train"]),
])
def test_pickled_cifar_release_is_refused_unopened(tmp_path, kind, layout):
    class Boom:  # unpickling this would raise, proving the loader never unpickles
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    for rel in layout:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(DataError, match="pickled python release.*never.*binary release"):
        ms.data.load(f"{kind}:{tmp_path}")


def test_cifar_empty_directory(tmp_path):
    with pytest.raises(DataError, match="no CIFAR batch files.*data_batch_1.bin"):
        files.load_cifar10(tmp_path)
    (tmp_path / "train").mkdir()  # an image folder's "train" is not the pickled release
    with pytest.raises(DataError, match="no CIFAR batch files.*train.bin"):
        files.load_cifar100(tmp_path)


# ---------------------------------------------------------------------------------------------- npz


def test_npz_classification_uint8_images(tmp_path):
    x0 = RNG.integers(0, 256, (20, 1, 6, 6), dtype=np.uint8)
    y0 = np.arange(20) % 4
    np.savez(tmp_path / "d.npz", x=x0, y=y0)
    x, y, meta = files.load_npz(tmp_path / "d.npz")
    np.testing.assert_allclose(x.numpy(), x0 / np.float32(255.0))
    assert y.dtype == torch.int64 and y.tolist() == y0.tolist()
    assert meta.num_classes == 4 and meta.task == CLASSIFICATION and meta.bounds == (0.0, 1.0)
    assert meta.input_shape == (1, 6, 6) and meta.name == f"npz:{tmp_path / 'd.npz'}"
    _, _, meta = files.load_npz(tmp_path / "d.npz", num_classes=10)
    assert meta.num_classes == 10
    with pytest.raises(DataError, match="num_classes=2"):
        files.load_npz(tmp_path / "d.npz", num_classes=2)


def test_npz_float_features_bounds_and_channels_last(tmp_path):
    x0 = RNG.normal(size=(8, 5, 5, 3)).astype(np.float64)
    np.savez_compressed(tmp_path / "d.npz", x=x0, y=np.ones(8, dtype=np.int32))
    x, y, meta = files.load_npz(str(tmp_path / "d.npz"))
    assert x.dtype == torch.float32 and x.shape == (8, 3, 5, 5)
    np.testing.assert_allclose(x.numpy(), x0.transpose(0, 3, 1, 2).astype(np.float32))
    assert meta.bounds == pytest.approx((x0.min(), x0.max()))
    np.savez(tmp_path / "g.npz", x=RNG.integers(0, 256, (4, 9, 9), dtype=np.uint8), y=np.zeros(4, int))
    assert files.load_npz(tmp_path / "g.npz")[2].input_shape == (1, 9, 9)


@pytest.mark.parametrize("yshape,k", [((30,), 1), ((30, 1), 1), ((30, 3), 3)])
def test_npz_regression(tmp_path, yshape, k):
    x0 = RNG.uniform(-2, 3, (30, 4)).astype(np.float32)
    y0 = RNG.normal(size=yshape)
    np.savez(tmp_path / "r.npz", x=x0, y=y0)
    splits = ms.data.load(f"npz:{tmp_path / 'r.npz'}", seed=1)
    meta = splits.meta
    assert meta.task == REGRESSION and meta.output_size == k and meta.input_shape == (4,)
    ys = torch.cat([s.y for s in splits[:3]])
    assert ys.dtype == torch.float32 and ys.shape == (30, k)
    assert sorted(ys[:, 0].tolist()) == pytest.approx(sorted(y0.reshape(30, -1)[:, 0].tolist()), abs=1e-6)
    assert meta.bounds == pytest.approx((x0.min(), x0.max()))


def test_npz_object_array_is_refused(tmp_path):
    p = tmp_path / "o.npz"
    np.savez(p, x=np.zeros((3, 2)), y=np.array([1, "a", None], dtype=object))
    with pytest.raises(DataError, match="object array.*never loaded"):
        files.load_npz(p)


@pytest.mark.parametrize("arrays,match", [
    ({"x": np.zeros((3, 2))}, "no array y"),
    ({"x": np.zeros((3, 2)), "y": np.zeros(4, int)}, "3 items but y has 4"),
    ({"x": np.array([["a", "b"]] * 3), "y": np.zeros(3, int)}, "dtype <U1"),
    ({"x": np.zeros((3, 2)), "y": np.array([0, -1, 2])}, "negative label"),
    ({"x": np.array([[np.nan, 0]] * 3), "y": np.zeros(3, int)}, "NaN"),
    ({"x": np.zeros((0, 2)), "y": np.zeros(0, int)}, "at least one item"),
])
def test_npz_malformed(tmp_path, arrays, match):
    np.savez(tmp_path / "m.npz", **arrays)
    with pytest.raises(DataError, match=match):
        files.load_npz(tmp_path / "m.npz")


def test_npz_missing_corrupt_or_plain_npy(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        files.load_npz(tmp_path / "none.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="bad.npz"):
        files.load_npz(tmp_path / "bad.npz")
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(DataError, match="single .npy array"):
        files.load_npz(tmp_path / "a.npy")


# ------------------------------------------------------------------------------------------- folder


def _png_folder(root: Path, spec: dict[str, list[tuple[str, tuple[int, int]]]]):
    from PIL import Image

    arrays = {}
    for cls, items in spec.items():
        (root / cls).mkdir(parents=True)
        for i, (mode, size) in enumerate(items):
            shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
            a = RNG.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(a, mode).save(root / cls / f"{i}.png")
            arrays[(cls, i)] = a
    return arrays


def test_folder_of_rgb_pngs(tmp_path):
    arrays = _png_folder(tmp_path, {"zebra": [("RGB", (6, 4))] * 2, "apple": [("RGB", (6, 4))] * 3})
    (tmp_path / "apple" / "notes.txt").write_text("ignored")
    x, y, meta = files.load_folder(tmp_path)
    assert x.shape == (5, 3, 4, 6) and x.dtype == torch.float32
    assert meta.extra["classes"] == ["apple", "zebra"] and meta.num_classes == 2
    assert y.tolist() == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(x[3].numpy(), arrays[("zebra", 0)].transpose(2, 0, 1) / np.float32(255.0))
    assert meta.input_shape == (3, 4, 6) and meta.bounds == (0.0, 1.0) and meta.name == f"folder:{tmp_path}"


def test_folder_greyscale_and_resize(tmp_path):
    _png_folder(tmp_path, {"a": [("L", (8, 8)), ("L", (5, 9))], "b": [("L", (8, 8))]})
    x, y, meta = files.load_folder(tmp_path)
    assert x.shape == (3, 1, 8, 8) and meta.input_shape == (1, 8, 8)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    x, _, meta = files.load_folder(tmp_path, size=(4, 3))
    assert x.shape == (3, 1, 3, 4)


def test_folder_mixed_modes_become_rgb(tmp_path):
    _png_folder(tmp_path, {"a": [("L", (4, 4))], "b": [("RGB", (4, 4))]})
    x, _, meta = files.load_folder(tmp_path)
    assert x.shape == (2, 3, 4, 4)
    assert torch.equal(x[0, 0], x[0, 1]) and torch.equal(x[0, 1], x[0, 2])  # grey → equal channels


def test_folder_refusals(tmp_path):
    with pytest.raises(DataError, match="no class sub-folders"):
        files.load_folder(tmp_path)
    _png_folder(tmp_path, {"a": [("RGB", (4, 4))]})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty holds no images"):
        files.load_folder(tmp_path)
    (tmp_path / "empty" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        ms.data.load(f"folder:{tmp_path}")
    with pytest.raises(DataError, match="size must be"):
        (tmp_path / "empty" / "broken.png").unlink()
        (tmp_path / "empty").rmdir()
        files.load_folder(tmp_path, size=(0, 4))


def test_folder_truncated_png_names_the_file(tmp_path):
    _png_folder(tmp_path, {"a": [("RGB", (16, 16))] * 2})
    p = tmp_path / "a" / "1.png"
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match="1.png"):
        files.load_folder(tmp_path)


# ------------------------------------------------------------------------------------------ embedded


def test_mnist5k(mnist):
    meta = mnist.meta
    assert meta.input_shape == (1, 28, 28) and meta.num_classes == 10 and meta.task == CLASSIFICATION
    assert (len(mnist.owner), len(mnist.attacker), len(mnist.test)) == (2000, 2000, 1000)
    x = torch.cat([mnist.owner.x, mnist.attacker.x, mnist.test.x])
    y = torch.cat([mnist.owner.y, mnist.attacker.y, mnist.test.y])
    assert x.dtype == torch.float32 and float(x.min()) == 0.0 and float(x.max()) == 1.0
    counts = torch.bincount(y, minlength=10)
    assert counts.min() >= 350 and counts.max() <= 650  # roughly 500 per digit


def test_digits():
    s = ms.data.load("digits")
    assert s.meta.input_shape == (1, 8, 8) and s.meta.num_classes == 10
    assert sum(len(p) for p in s[:3]) == 1797
    assert 0.0 <= float(s.owner.x.min()) and float(s.owner.x.max()) <= 1.0


def test_diabetes_is_regression():
    s = ms.data.load("diabetes")
    assert s.meta.task == REGRESSION and s.meta.output_size == 1 and s.meta.input_shape == (10,)
    assert s.owner.y.dtype == torch.float32 and s.owner.y.shape[1] == 1


def test_sample_images_have_three_channels():
    s = ms.data.load("sample-images")
    assert s.meta.input_shape == (3, 32, 32) and s.owner.x.shape[1] == 3 and s.meta.num_classes == 2


# -------------------------------------------------------------------------------------------- splits


def _ids(part) -> set[bytes]:
    return {row.numpy().tobytes() for row in part.x}


def test_splits_disjoint_and_seeded():
    a, b, c = ms.data.load("digits", seed=3), ms.data.load("digits", seed=3), ms.data.load("digits", seed=4)
    owner, attacker, test = _ids(a.owner), _ids(a.attacker), _ids(a.test)
    assert not owner & attacker and not owner & test and not attacker & test
    assert torch.equal(a.owner.x, b.owner.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.owner.x, c.owner.x)


def test_split_fractions(tmp_path):
    s = ms.data.load("digits", fractions=(0.5, 0.25, 0.25))
    assert len(s.owner) == int(0.5 * 1797)
    for bad in [(0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)]:
        with pytest.raises(DataError, match="fractions"):
            ms.data.load("digits", fractions=bad)


def test_unknown_name_lists_known_ones():
    with pytest.raises(DataError) as e:
        ms.data.load("imagenet")
    msg = str(e.value)
    for known in ["mnist5k", "digits", "diabetes", "sample-images", "idx:PATH", "cifar10:PATH",
                  "cifar100:PATH", "npz:PATH", "folder:PATH"]:
        assert known in msg
    assert isinstance(e.value, ModelSealError) and "\n" not in msg


# --------------------------------------------------------------------------------------------- cache


def test_mnist5k_cache_is_created_reused_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSEAL_CACHE", str(tmp_path))
    x1, y1, _ = embedded.load_mnist5k()
    cache = tmp_path / "mnist5k-v2.npz"
    assert cache.is_file()

    def no_csv():
        raise AssertionError("the CSV was parsed again although the cache exists")

    with monkeypatch.context() as m:
        m.setattr(embedded, "_mnist_csv", no_csv)
        x2, y2, _ = embedded.load_mnist5k()
    assert torch.equal(x1, x2) and torch.equal(y1, y2)

    cache.write_bytes(b"garbage, not an npz archive")
    x3, y3, _ = embedded.load_mnist5k()
    assert torch.equal(x1, x3) and torch.equal(y1, y3)
    with np.load(cache, allow_pickle=False) as z:
        assert z["x"].shape == (5000, 28, 28)
    assert not list(tmp_path.glob("*.tmp*"))


def test_mnist5k_truncated_cache_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSEAL_CACHE", str(tmp_path))
    x1, _, _ = embedded.load_mnist5k()
    cache = tmp_path / "mnist5k-v2.npz"
    cache.write_bytes(cache.read_bytes()[: cache.stat().st_size // 2])
    x2, _, _ = embedded.load_mnist5k()
    assert torch.equal(x1, x2)
    with np.load(cache, allow_pickle=False) as z:
        assert z["x"].shape == (5000, 28, 28)


def test_csv_table_classification_regression_and_a_path_without_its_kind(tmp_path):
    """csv:PATH reads a numeric table with a header (the label column by name, else the last); an existing
    .csv, .npz or folder path works without its kind (issue 40: `--data` needed `folder:` and read no CSV)."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    lines = [",".join([*wine.feature_names, "label"])]
    lines += [",".join([*(f"{v:g}" for v in row), str(int(t))]) for row, t in zip(wine.data, wine.target, strict=True)]
    (tmp_path / "wine.csv").write_text("\n".join(lines) + "\n")
    s = ms.data.load(f"csv:{tmp_path / 'wine.csv'}", seed=0)
    assert s.meta.input_shape == (13,) and s.meta.num_classes == 3 and s.meta.task == "classification"
    assert len(s.owner) + len(s.attacker) + len(s.test) == 178
    plain = ms.data.load(str(tmp_path / "wine.csv"), seed=0)
    assert torch.equal(plain.owner.x, s.owner.x)
    m = ms.models.build("mlp", s.meta, seed=0)
    ms.train.fit(m, s.owner, epochs=30, seed=0, progress=False)
    assert ms.train.evaluate(m, s.test) > 0.5

    (tmp_path / "reg.csv").write_text("y,a,b\n0.5,1,2\n1.5,3,4\n2.25,5,6\n")  # label by name, first column
    r = ms.data.load(f"csv:{tmp_path / 'reg.csv'}", seed=0, fractions=(0.34, 0.33, 0.33))
    assert r.meta.task == "regression" and r.meta.input_shape == (2,)

    np.savez(tmp_path / "t.npz", x=np.random.rand(20, 4).astype(np.float32), y=np.arange(20) % 2)
    assert ms.data.load(str(tmp_path / "t.npz"), seed=0).meta.num_classes == 2


@pytest.mark.parametrize("text, says", [
    ("a,b\n1,2\n3\n", "line 3 has 1 fields"),
    ("a,b\n1,x\n", "'x' is not a number"),
    ("a\n1\n", "at least two distinct columns"),
    ("a,b\n", "header row and at least one row"),
    ("a,b\n1,nan\n", "NaN"),
])
def test_bad_csv_is_one_line(tmp_path, text, says):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(ms.errors.DataError) as e:
        ms.data.load(f"csv:{tmp_path / 'bad.csv'}")
    assert says in str(e.value) and "\n" not in str(e.value)
