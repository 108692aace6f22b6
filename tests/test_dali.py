"""The DALI pipelines on real photos (CPU-only DALI), checked against the prep pipeline's patches.

Every training or evaluation output is rebuilt from the uint8 256x256 patch that prep_pipeline
gives for the same file: slice, mirror, subtract the mean, add the lighting shift. The pipelines
compute in float32, so comparisons use atol 1e-3 (float32 rounding of values up to ~300 is
~3e-5); any wrong offset, flip, mean or shift is off by whole grey levels.
"""

from __future__ import annotations

import numpy as np
import pytest

from alexnet.pipeline.dali import (
    CROP,
    MAX_OFFSET,
    SIZE,
    augmentation,
    eval_pipeline,
    pipe_options,
    prep_pipeline,
    train_pipeline,
)
from alexnet.pipeline.loader import Loader, Preset, QueryCrops

ATOL = 1e-3
DEBUG_OUTPUTS = ("images", "labels", "offset", "mirror", "alpha")


def opts(batch: int, seed: int = 0) -> dict:
    return pipe_options("cpu", batch, seed, num_threads=2)


def run(pipe, outputs=("images", "labels")) -> list[np.ndarray]:
    """One pass of a Loader over `pipe`, outputs concatenated over batches as numpy arrays."""
    batches = list(Loader(pipe, outputs=outputs))
    return [np.concatenate([b[i].numpy() for b in batches]) for i in range(len(outputs))]


@pytest.fixture(scope="module")
def files(real_jpegs) -> list[str]:
    return real_jpegs[::2][:10] + real_jpegs[1::2][:2]  # 12 photos, 10 classes


@pytest.fixture(scope="module")
def patches(files) -> np.ndarray:
    """float64 N x 256 x 256 x 3: prep_pipeline's centre patch of every file."""
    (images,) = run(prep_pipeline(files, device="cpu", **opts(5)), outputs=("images",))
    assert images.shape == (len(files), SIZE, SIZE, 3) and images.dtype == np.uint8
    return images.astype(np.float64)


@pytest.fixture(scope="module")
def lighting() -> tuple[np.ndarray, np.ndarray]:
    """A random rotation (not symmetric, so eigvecs vs eigvecs.T matters) and eigenvalues of the
    size real RGB statistics have in 0-255 units."""
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    assert np.abs(q - q.T).max() > 0.1
    return q, np.array([4000.0, 900.0, 150.0])


MEANS = {
    # the paper's mean image: random per pixel, so any misplaced or flipped mean shows
    "image": np.random.default_rng(2).uniform(60, 200, (SIZE, SIZE, 3)),
    # the common simplification: 3 numbers
    "channel": np.array([123.675, 116.28, 103.53]),
}


def centred(patch: np.ndarray, mean: np.ndarray) -> np.ndarray:
    return patch - mean  # the channel mean (3,) broadcasts over HxW


def crop_hwc(img: np.ndarray, x: int, y: int, mirror: bool) -> np.ndarray:
    out = img[y : y + CROP, x : x + CROP]
    return out[:, ::-1] if mirror else out


# --- training ------------------------------------------------------------------------------


def train_epoch(files, mean, lighting, augment, *, batch: int, threads: int = 2, debug=True):
    """One pass of the train pipeline over `files` (labels = positions), as numpy arrays."""
    eigvecs, eigvals = lighting
    pipe = train_pipeline(
        files,
        list(range(len(files))),
        mean,
        eigvecs,
        eigvals,
        augment,
        device="cpu",
        debug=debug,
        **pipe_options("cpu", batch, 0, num_threads=threads),
    )
    return run(pipe, DEBUG_OUTPUTS if debug else ("images", "labels"))


@pytest.mark.parametrize("mode", ["image", "channel"])
def test_train_output_is_mirrored_crop_of_centred_patch_plus_lighting(
    files, patches, lighting, mode
):
    eigvecs, eigvals = lighting
    mean = MEANS[mode]
    augment = augmentation(11, 0, len(files))
    images, labs, offsets, mirrors, alphas = train_epoch(files, mean, lighting, augment, batch=5)
    assert images.shape == (len(files), 3, CROP, CROP) and images.dtype == np.float32
    assert labs.tolist() == list(range(len(files)))  # one pass: every image once, in order
    # each image got the choices of its own row
    np.testing.assert_array_equal(offsets, augment["offset"])
    np.testing.assert_array_equal(mirrors.reshape(-1), augment["mirror"])
    np.testing.assert_array_equal(alphas, augment["alpha"])

    shifts = []
    rows = zip(images, labs, offsets.astype(int), mirrors.reshape(-1), alphas, strict=True)
    for out, label, (x, y), m, alpha in rows:
        want = crop_hwc(centred(patches[label], mean), x, y, bool(m))
        diff = out.transpose(1, 2, 0).astype(np.float64) - want
        shift = diff.mean(axis=(0, 1))
        # what is left is one RGB constant over all pixels...
        assert np.abs(diff - shift).max() <= ATOL, (label, x, y, m)
        # ...and it is the paper's PCA shift, in 0-255 units: eigvecs @ (alpha * eigvals) / 255
        np.testing.assert_allclose(shift, eigvecs @ (alpha * eigvals) / 255, atol=ATOL)
        shifts.append(shift)
    assert np.abs(shifts).max() > 0.5  # the shift is really there
    assert 0 < mirrors.sum() < len(files)  # both branches were checked


def test_augmentation_statistics_over_many_epochs():
    """40 epochs of 12 images: 480 draws each of x, y, mirror, and 1440 of alpha."""
    draws = [augmentation(5, epoch, 12) for epoch in range(40)]
    offsets = np.concatenate([d["offset"] for d in draws])
    mirrors = np.concatenate([d["mirror"] for d in draws])
    alphas = np.concatenate([d["alpha"] for d in draws])
    # crop offsets: integers in [0, 32], and every one of the 33 positions is used on each axis
    # (the chance that a uniform draw misses one in 480 tries is below 1e-5)
    for axis in (0, 1):
        assert set(offsets[:, axis].tolist()) == set(range(MAX_OFFSET + 1)), axis
    # mirror with p = 1/2 (standard error 0.023)
    assert set(np.unique(mirrors)) == {0, 1} and 0.4 <= mirrors.mean() <= 0.6
    # alpha ~ N(0, 0.1): 1440 draws, standard error of the std 0.002, of the mean 0.003
    assert abs(alphas.std() - 0.1) <= 0.01, alphas.std()
    assert abs(alphas.mean()) <= 0.015
    assert abs(np.corrcoef(alphas.T)[np.triu_indices(3, 1)]).max() < 0.15  # independent
    # a fresh alpha every time an image is read, i.e. every epoch
    assert len(np.unique([d["alpha"][0, 0] for d in draws])) == 40


def test_choices_depend_on_seed_epoch_and_index_alone(files, lighting):
    a = augmentation(7, 3, 12)
    for name, values in augmentation(7, 3, 12).items():
        np.testing.assert_array_equal(values, a[name], err_msg=name)
    assert not np.array_equal(augmentation(8, 3, 12)["alpha"], a["alpha"])
    assert not np.array_equal(augmentation(7, 4, 12)["alpha"], a["alpha"])
    # the same images come out whatever the batch size and thread count
    one = train_epoch(files, MEANS["image"], lighting, a, batch=4, threads=1, debug=False)
    other = train_epoch(files, MEANS["image"], lighting, a, batch=5, threads=2, debug=False)
    np.testing.assert_array_equal(one[1], other[1])
    np.testing.assert_array_equal(one[0], other[0])
    # and a subset in another order (a resumed epoch, a shard) gets each image's own choices
    order = [9, 2, 11, 4]
    part = train_epoch(
        [files[i] for i in order],
        MEANS["image"],
        lighting,
        {k: v[order] for k, v in a.items()},
        batch=3,
        debug=False,
    )
    np.testing.assert_array_equal(part[0], one[0][order])


def test_lighting_std_zero_gives_the_plain_crop(files, patches, lighting):
    augment = augmentation(0, 0, 4, lighting_std=0.0)
    images, labs, offsets, mirrors, alphas = train_epoch(
        files[:4], MEANS["channel"], lighting, augment, batch=4
    )
    assert np.all(alphas == 0)
    rows = zip(images, labs, offsets.astype(int), mirrors.reshape(-1), strict=True)
    for out, label, (x, y), m in rows:
        want = crop_hwc(centred(patches[label], MEANS["channel"]), x, y, bool(m))
        np.testing.assert_allclose(out.transpose(1, 2, 0), want, atol=ATOL)


# --- evaluation ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["image", "channel"])
def test_eval_centre_crop(files, patches, mode):
    mean = MEANS[mode]
    n = 7
    pipe = eval_pipeline(files[:n], list(range(n)), mean, device="cpu", ten_crop=False, **opts(3))
    images, labs = run(pipe)
    assert images.shape == (n, 3, CROP, CROP)
    assert labs.tolist() == list(range(n))
    c = MAX_OFFSET // 2
    for out, label in zip(images, labs, strict=True):
        want = crop_hwc(centred(patches[label], mean), c, c, False)
        np.testing.assert_allclose(out.transpose(1, 2, 0), want, atol=ATOL)


@pytest.mark.parametrize("mode", ["image", "channel"])
def test_eval_ten_crops_are_corners_centre_and_mirrors(files, patches, mode):
    mean = MEANS[mode]
    n = 5
    pipe = eval_pipeline(files[:n], list(range(n)), mean, device="cpu", ten_crop=True, **opts(2))
    images, labs = run(pipe)
    assert images.shape == (n, 10, 3, CROP, CROP)
    assert labs.tolist() == list(range(n))
    e, c = MAX_OFFSET, MAX_OFFSET // 2
    # top-left, top-right, bottom-left, bottom-right, centre; then the same five mirrored
    positions = [(0, 0), (e, 0), (0, e), (e, e), (c, c)]
    for out, label in zip(images, labs, strict=True):
        img = centred(patches[label], mean)
        for k, (m, (x, y)) in enumerate([(m, p) for m in (False, True) for p in positions]):
            np.testing.assert_allclose(
                out[k].transpose(1, 2, 0),
                crop_hwc(img, x, y, m),
                atol=ATOL,
                err_msg=f"image {label} crop {k}",
            )
        # the 10 crops are distinct views
        assert min(np.abs(out[i] - out[j]).mean() for i in range(10) for j in range(i)) > 1


def test_query_crops_are_the_eval_centre_crops_call_after_call(files, patches):
    """One pipeline fed again and again (as a server does), a bad image in between."""
    mean = MEANS["image"]
    crops = QueryCrops(Preset(mean, num_threads=2), batch_size=3)
    c = MAX_OFFSET // 2
    for chunk in ([0], [3, 1, 2], [4]):
        out = crops([np.fromfile(files[i], np.uint8) for i in chunk]).numpy()
        assert out.shape == (len(chunk), 3, CROP, CROP)
        for got, i in zip(out, chunk, strict=True):
            want = crop_hwc(centred(patches[i], mean), c, c, False)
            np.testing.assert_allclose(got.transpose(1, 2, 0), want, atol=ATOL)
        if chunk == [0]:
            with pytest.raises(RuntimeError):
                crops([np.frombuffer(b"not an image", np.uint8)])
    with pytest.raises(ValueError, match="1 to 3 images"):
        crops([np.fromfile(files[0], np.uint8)] * 4)


def test_eval_yields_every_image_once_when_batch_does_not_divide(files):
    n = 7
    pipe = eval_pipeline(files[:n], list(range(n)), MEANS["channel"], device="cpu", **opts(3))
    loader = Loader(pipe)
    assert loader.size == n and len(loader) == 3
    for _ in range(2):  # and again on the next pass
        got = [lab.tolist() for _, lab in loader]
        assert [len(g) for g in got] == [3, 3, 1]
        assert sum(got, []) == list(range(n))


@pytest.mark.parametrize("ten_crop", [False, True])
def test_eval_two_shards_cover_every_image_once(files, patches, ten_crop):
    n = 7
    seen, images = [], {}
    for shard in (0, 1):
        pipe = eval_pipeline(
            files[:n],
            list(range(n)),
            MEANS["channel"],
            device="cpu",
            ten_crop=ten_crop,
            shard_id=shard,
            num_shards=2,
            **opts(3),
        )
        out, labs = run(pipe)
        assert len(out) == len(labs) > 0
        seen += labs.tolist()
        images.update(zip(labs.tolist(), out, strict=True))
    assert sorted(seen) == list(range(n))
    c = MAX_OFFSET // 2
    for label, out in images.items():  # and each label came with its own image
        centre = out[4] if ten_crop else out
        want = crop_hwc(centred(patches[label], MEANS["channel"]), c, c, False)
        np.testing.assert_allclose(centre.transpose(1, 2, 0), want, atol=ATOL)


@pytest.mark.parametrize("kind", ["eval-shard0-of-2", "train"])
def test_loader_size_is_what_one_pass_yields(files, lighting, kind):
    n = 7
    if kind == "train":
        augment = augmentation(0, 0, n)
        pipe = train_pipeline(
            files[:n], list(range(n)), MEANS["channel"], *lighting, augment, **opts(3)
        )
    else:
        pipe = eval_pipeline(
            files[:n],
            list(range(n)),
            MEANS["channel"],
            device="cpu",
            shard_id=0,
            num_shards=2,
            **opts(3),
        )
    loader = Loader(pipe)
    yielded = sum(len(lab) for _, lab in loader)
    assert loader.size == yielded
