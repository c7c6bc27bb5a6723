"""Loading, validating, splitting and feeding CIFAR-10: tiny temp layouts plus the real files."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import RunsCommand
from layouts import CLASSES, batch_dict, dump, images_for, make_layout, to_rows

from utils import dataset, loader
from utils.config import Config
from utils.dataset import (
    BATCHES_SUBDIR,
    DataError,
    DataNotFoundError,
    UnsafePickleError,
    find_data_dir,
    load_batch,
    load_cifar10,
    load_unlabeled,
    prepare_splits,
    safe_load_pickle,
    train_val_split,
)
from utils.loader import DeviceLoader
from utils.runtime import platforms


@pytest.fixture
def tiny(tmp_path):
    return make_layout(tmp_path / "cifar")


# --- loading ----------------------------------------------------------------------------------
def test_loads_batches_as_nhwc_uint8_with_labels_and_class_order(tiny):
    ds = load_cifar10(tiny)
    assert ds.train_images.shape == (100, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int64 and ds.train_labels.tolist() == (list(range(10)) * 10)
    assert ds.test_images.shape == (40, 32, 32, 3)
    assert ds.classes == CLASSES
    # Row layout is channel-first: the first batch must come back pixel-exact in NHWC.
    np.testing.assert_array_equal(ds.train_images[:20], images_for(20, 0))


def test_unlabeled_accepts_nhwc_and_the_2024_flat_layout(tmp_path):
    nhwc = load_unlabeled(make_layout(tmp_path / "a") / dataset.NOLABEL_FILE)
    flat = load_unlabeled(make_layout(tmp_path / "b", flat_unlabeled=True) / dataset.NOLABEL_FILE)
    np.testing.assert_array_equal(nhwc[0], flat[0])
    np.testing.assert_array_equal(nhwc[0], images_for(30, 123))
    assert nhwc[1].tolist() == list(range(30))


def test_data_dir_order_env_var_first(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv(dataset.DATA_ENV, str(tiny))
    assert find_data_dir() == tiny.resolve()
    monkeypatch.setenv(dataset.DATA_ENV, str(tmp_path / "nowhere"))
    monkeypatch.setattr(platforms, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(platforms, "KAGGLE_INPUT", tmp_path / "kaggle")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataNotFoundError) as err:
        find_data_dir()
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "kaggle" in msg and "make_cifar10.py" in msg


def test_missing_data_folder_says_where_it_looked_and_how_to_fix(tmp_path):
    with pytest.raises(DataNotFoundError, match="Looked for the batches in") as err:
        load_cifar10(tmp_path / "empty", download=False)
    assert str(tmp_path / "empty") in str(err.value) and "downloads the official" in str(err.value)


def test_missing_batch_file_is_named(tiny):
    (tiny / BATCHES_SUBDIR / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match="data_batch_3: file not found"):
        load_cifar10(tiny, download=False)


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(b""), "empty"),
    (lambda p: p.write_bytes(p.read_bytes()[:1000]), "truncated or corrupt"),
    (lambda p: p.write_bytes(b"not a pickle at all"), "truncated or corrupt"),
    (lambda p: dump({b"pixels": to_rows(images_for(4, 0)), b"labels": [0] * 4}, p), "missing key b'data'"),
    (lambda p: dump({b"data": to_rows(images_for(4, 0)).astype(np.float32), b"labels": [0] * 4}, p), "dtype float32"),
    (lambda p: dump({b"data": np.zeros((4, 1000), np.uint8), b"labels": [0] * 4}, p), r"shape \(4, 1000\)"),
    (lambda p: dump(batch_dict(images_for(4, 0), [0, 1, 2, 10]), p), "labels must be 0-9"),
    (lambda p: dump(batch_dict(images_for(4, 0), [0, 1, 2]), p), "4 images but 3 labels"),
    (lambda p: dump([1, 2, 3], p), "expected a dict"),
])
def test_bad_batch_file_error_names_file_and_problem(tiny, damage, message):
    path = tiny / BATCHES_SUBDIR / "data_batch_2"
    damage(path)
    with pytest.raises(DataError, match=message) as err:
        load_batch(path)
    assert str(path) in str(err.value) and "Fix:" in str(err.value)


@pytest.mark.parametrize("obj, message", [
    ({b"data": images_for(5, 0), b"ids": np.arange(4)}, "5 images but 4 ids"),
    ({b"data": images_for(5, 0), b"ids": np.array([0, 1, 2, 2, 4])}, "duplicate ids"),
    ({b"data": images_for(5, 0)[:, :, :16], b"ids": np.arange(5)}, r"shape \(5, 32, 16, 3\)"),
    ({b"data": images_for(5, 0)}, "missing key b'ids'"),
])
def test_bad_unlabeled_pickle_is_refused_with_reason(tmp_path, obj, message):
    path = dump(obj, tmp_path / "cifar_test_nolabel.pkl")
    with pytest.raises(DataError, match=message) as err:
        load_unlabeled(path)
    assert str(path) in str(err.value)


def test_malicious_pickle_is_refused_and_its_command_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({b"data": RunsCommand(marker), b"ids": [0]})
    # The payload really is hostile: plain pickle would run the command.
    pickle.loads(payload)
    assert marker.exists()
    marker.unlink()

    path = tmp_path / "cifar_test_nolabel.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|nt.system") as err:
        load_unlabeled(path)
    assert str(path) in str(err.value) and "Nothing from the file was executed" in str(err.value)
    assert not marker.exists()


def test_safe_unpickler_reads_python2_style_protocol2_pickles(tmp_path):
    path = dump(batch_dict(images_for(3, 5), [1, 2, 3]), tmp_path / "b", protocol=2)
    images, labels = load_batch(path)
    np.testing.assert_array_equal(images, images_for(3, 5))
    assert safe_load_pickle(path)[b"batch_label"] == b"tiny"


# --- splits -----------------------------------------------------------------------------------
def test_split_is_90_10_stratified_disjoint_and_reproducible():
    labels = np.repeat(np.arange(10), 50)
    tr, va = train_val_split(labels, 0.1, seed=3)
    assert len(tr) == 450 and len(va) == 50 and not set(tr) & set(va)
    assert np.bincount(labels[va]).tolist() == [5] * 10
    tr2, va2 = train_val_split(labels, 0.1, seed=3)
    assert np.array_equal(va, va2) and not np.array_equal(va, train_val_split(labels, 0.1, seed=4)[1])


def test_prepare_splits_subset_and_stats_from_train_split_only(tiny):
    make_layout(tiny, per_batch=40)   # 20 images per class
    cfg = Config(data_dir=str(tiny), subset_per_class=15, test_limit=25)
    s = prepare_splits(cfg)
    assert len(s.train_labels) + len(s.val_labels) == 150 and len(s.val_labels) == 15
    assert set(np.bincount(np.concatenate([s.train_labels, s.val_labels]))) == {15}
    assert len(s.test_labels) == 25
    expected_mean = (s.train_images.reshape(-1, 3) / 255.0).mean(0)
    np.testing.assert_allclose(s.mean, expected_mean, rtol=1e-9)


# --- loaders ----------------------------------------------------------------------------------
def _loader(images, labels, train, **kw):
    return DeviceLoader(images, labels, [0.5] * 3, [0.25] * 3, 16, "cpu", train=train, **kw)


def test_eval_loader_is_deterministic_in_order_and_unaugmented():
    images, labels = images_for(40, 1), np.arange(40) % 10
    loader = _loader(images, labels, train=False)
    first = [(x.clone(), y.clone()) for x, y in loader]
    second = list(loader)
    assert [len(y) for _, y in first] == [16, 16, 8]
    for (x1, y1), (x2, y2) in zip(first, second):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    expected = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(torch.cat([x for x, _ in first]), expected)


def test_train_loader_crops_flips_reproducibly_per_epoch():
    images, labels = images_for(32, 2), np.arange(32) % 10
    loader = _loader(images, labels, train=True, seed=7)
    loader.set_epoch(0)
    a = [(x.clone(), y.clone()) for x, y in loader]
    b = list(loader)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    loader.set_epoch(1)
    c = list(loader)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c))
    # Every augmented image is one of the 9x9 shifts (zero padded), possibly mirrored, of its source.
    x, y = a[0]
    raw = torch.from_numpy(images).permute(0, 3, 1, 2)
    padded = torch.nn.functional.pad(raw, (4, 4, 4, 4))
    pixels = (x[0] * 0.25 + 0.5) * 255

    def view(i, dy, dx, mirrored):
        v = padded[i, :, dy:dy + 32, dx:dx + 32]
        return (v.flip(2) if mirrored else v).float()

    matches = [i for i in range(32) for dy in range(9) for dx in range(9) for flip in (False, True)
               if torch.allclose(pixels, view(i, dy, dx, flip), atol=1e-3)]
    assert matches and all(labels[i] == int(y[0]) for i in matches)


# The exact augmentation of every training image of an epoch, recomputed independently from the draws.
MEAN, STD = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]


def numpy_reference_epoch(images, draws, cutout_size):
    """Each training image of the epoch, in loader order, as float32 CHW: zero-pad 4, crop at (dy, dx), mirror
    where flip, normalise, then zero the cutout square (rows cy - size//2 ... cy - size//2 + size - 1, clipped)."""
    mean, std = np.float32(MEAN), np.float32(STD)
    out = []
    for k, i in enumerate(draws["order"].tolist()):
        padded = np.pad(images[i], ((4, 4), (4, 4), (0, 0)))
        dy, dx = int(draws["dy"][k]), int(draws["dx"][k])
        x = padded[dy:dy + 32, dx:dx + 32]
        if int(draws["flip"][k]):
            x = x[:, ::-1]
        x = (x.astype(np.float32) / np.float32(255) - mean) / std
        if cutout_size:
            y0 = int(draws["cy"][k]) - cutout_size // 2
            x0 = int(draws["cx"][k]) - cutout_size // 2
            x[max(y0, 0):max(y0 + cutout_size, 0), max(x0, 0):max(x0 + cutout_size, 0)] = 0
        out.append(x.transpose(2, 0, 1))
    return np.stack(out)


@pytest.mark.parametrize("cutout_size", [0, 8])
def test_every_training_image_is_its_source_cropped_flipped_and_cut_out_exactly_as_drawn(cutout_size):
    n = 120
    images, labels = images_for(n, 4), np.arange(n) % 10
    loader = DeviceLoader(images, labels, MEAN, STD, 32, "cpu", train=True, cutout_size=cutout_size, seed=5)
    loader.set_epoch(3)
    draws = loader.draw_epoch()
    batches = list(loader)
    assert [len(y) for _, y in batches] == [32, 32, 32, 24]
    x = torch.cat([b for b, _ in batches]).numpy()
    y = torch.cat([t for _, t in batches]).numpy()
    order = draws["order"].numpy()
    assert sorted(order.tolist()) == list(range(n)) and not np.array_equal(order, np.arange(n))
    np.testing.assert_array_equal(y, labels[order])
    np.testing.assert_allclose(x, numpy_reference_epoch(images, draws, cutout_size), rtol=0, atol=1e-6)

    # The draws really vary: about half the images mirrored, almost all shifted off the centre (4, 4).
    flips = draws["flip"].numpy()
    assert set(flips.tolist()) == {0, 1} and 0.35 < flips.mean() < 0.65
    dy, dx = draws["dy"].numpy(), draws["dx"].numpy()
    assert ((dy != 4) | (dx != 4)).mean() > 0.9
    assert set(dy.tolist()) <= set(range(9)) and len(set(dy.tolist())) >= 8 and len(set(dx.tolist())) >= 8
    if cutout_size:
        cy, cx = draws["cy"].numpy(), draws["cx"].numpy()
        assert set(cy.tolist()) <= set(range(32)) and len(set(cy.tolist())) >= 20 and len(set(cx.tolist())) >= 20
        # The square is really there: every image has exactly the erased pixels the reference zeroes.
        assert ((x == 0).all(1).sum((1, 2)) > 0).all()
    else:
        assert "cy" not in draws


def first_release_batches(images, labels, batch_size, seed, epoch, cutout_size):
    """The first release's training loader: one CPU generator seeded (seed, epoch), randperm once, then per
    batch random_crop (dy, dx), random_flip, normalise and cutout, each drawing as it goes."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    source = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    targets = torch.as_tensor(labels, dtype=torch.long)
    mean = torch.tensor(MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(STD, dtype=torch.float32).view(1, 3, 1, 1)
    order = torch.randperm(len(source), generator=generator)
    out = []
    for lo in range(0, len(source), batch_size):
        idx = order[lo:lo + batch_size]
        if len(idx) < 2:          # a lone last image would break BatchNorm: dropped
            break
        x = loader.random_crop(source[idx], loader.CROP_PAD, generator)
        x = loader.random_flip(x, generator)
        x = (x.float() / 255 - mean) / std
        if cutout_size:
            x = loader.cutout(x, cutout_size, generator)
        out.append((x, targets[idx]))
    return out


@pytest.mark.parametrize("cutout_size", [0, 8])
def test_training_batches_are_bit_identical_to_the_first_release_loader(cutout_size):
    images, labels = images_for(45, 6), np.arange(45) % 10     # batches of 16, 16 and a partial 13
    loader = DeviceLoader(images, labels, MEAN, STD, 16, "cpu", train=True, cutout_size=cutout_size, seed=11)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        ours = list(loader)
        reference = first_release_batches(images, labels, 16, 11, epoch, cutout_size)
        assert [len(y) for _, y in ours] == [len(y) for _, y in reference] == [16, 16, 13]
        for i, ((x, y), (x_ref, y_ref)) in enumerate(zip(ours, reference)):
            assert torch.equal(y, y_ref), f"epoch {epoch} batch {i}: labels differ"
            assert torch.equal(x, x_ref), f"epoch {epoch} batch {i}: pixels differ from the first release"


RANDOM_FUNCTIONS = ("rand", "randint", "randperm", "randn", "rand_like", "randint_like", "randn_like", "bernoulli",
                    "multinomial", "normal", "poisson")
RANDOM_METHODS = ("random_", "uniform_", "normal_", "bernoulli_", "exponential_", "geometric_", "cauchy_",
                  "log_normal_")


@pytest.mark.parametrize("auto_augment", ["none", "trivialaugment"])
def test_an_epoch_makes_all_its_random_draws_up_front_and_none_per_batch(monkeypatch, auto_augment):
    images, labels = images_for(45, 7), np.arange(45) % 10
    loader = DeviceLoader(images, labels, MEAN, STD, 16, "cpu", train=True, cutout_size=8, seed=3,
                          auto_augment=auto_augment)
    loader.set_epoch(2)
    expected = [(x.clone(), y.clone()) for x, y in loader]
    armed = {"on": False, "draw_epoch_calls": 0}

    def refuse_when_armed(name, real):
        def guarded(*args, **kwargs):
            if armed["on"]:
                raise AssertionError(f"torch.{name} called while iterating an epoch, after draw_epoch()")
            return real(*args, **kwargs)
        return guarded

    for name in RANDOM_FUNCTIONS:
        monkeypatch.setattr(torch, name, refuse_when_armed(name, getattr(torch, name)))
    for name in RANDOM_METHODS:
        monkeypatch.setattr(torch.Tensor, name, refuse_when_armed(f"Tensor.{name}", getattr(torch.Tensor, name)))
    real_draw_epoch = loader.draw_epoch

    def draw_then_arm():
        draws = real_draw_epoch()
        armed["on"] = True
        armed["draw_epoch_calls"] += 1
        return draws

    monkeypatch.setattr(loader, "draw_epoch", draw_then_arm)
    got = list(loader)
    assert armed["draw_epoch_calls"] == 1
    assert len(got) == len(expected) == 3
    assert all(torch.equal(x, x_ref) and torch.equal(y, y_ref) for (x, y), (x_ref, y_ref) in zip(got, expected))


def test_train_loader_drops_a_lone_last_image_for_batchnorm():
    loader = _loader(images_for(33, 3), np.zeros(33), train=True)
    assert len(loader) == 2 and sum(len(y) for _, y in loader) == 32
    assert len(_loader(images_for(33, 3), np.zeros(33), train=False)) == 3


# --- the real files ---------------------------------------------------------------------------
def test_real_cifar10_layout(cifar_dir):
    ds = load_cifar10(cifar_dir)
    assert ds.train_images.shape == (50000, 32, 32, 3) and ds.test_images.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.train_labels).tolist() == [5000] * 10
    assert ds.classes == CLASSES
    images, ids = load_unlabeled(ds.nolabel_path)
    assert images.shape == (10000, 32, 32, 3) and images.dtype == np.uint8 and len(np.unique(ids)) == 10000


@pytest.mark.parametrize("size", [8, 12, 5])
def test_cutout_erases_a_square_of_exactly_the_given_side(size):
    x = torch.ones(64, 3, 32, 32)
    out = loader.cutout(x, size, torch.Generator().manual_seed(0))
    erased = (out[:, 0] == 0)
    rows, cols = erased.any(2).sum(1), erased.any(1).sum(1)
    inside = [(r, c) for r, c in zip(rows.tolist(), cols.tolist())]
    assert max(inside) == (size, size) and all(r <= size and c <= size for r, c in inside)
    assert torch.equal(erased.sum((1, 2)), rows * cols)   # a rectangle, clipped only at the border


def test_the_download_checks_the_official_tarball_reads_it_safely_and_deletes_it(tmp_path, monkeypatch):
    """No network here: torchvision's download_url is replaced by one that writes a tarball in the official layout
    (cifar-10-batches-py/ inside) and records the md5 it was asked to check."""
    import tarfile

    import torchvision.datasets.utils as tv_utils
    source = make_layout(tmp_path / "source")
    asked = {}

    def fake_download(url, root, filename=None, md5=None, **_):
        asked.update(url=url, md5=md5)
        Path(root).mkdir(parents=True, exist_ok=True)
        with tarfile.open(Path(root) / Path(url).name, "w:gz") as tar:
            tar.add(source / BATCHES_SUBDIR, arcname="cifar-10-batches-py")

    monkeypatch.setattr(tv_utils, "download_url", fake_download)
    monkeypatch.setattr(platforms, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setattr(platforms, "KAGGLE_INPUT", tmp_path / "kaggle")
    monkeypatch.delenv(dataset.DATA_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    ds = load_cifar10(download=True)
    assert asked == {"url": dataset.CIFAR10_URL, "md5": dataset.CIFAR10_MD5}
    assert ds.root == tmp_path / "repo" / "data" and ds.train_images.shape == (100, 32, 32, 3)
    assert not list((tmp_path / "repo" / "data").rglob("*.tar.gz")), "the tarball is deleted once extracted"
