"""stats.compute_stats against a plain numpy/PIL implementation of the same steps.

Tolerances, and why (measured on these images: mean image off by at most ~0.9 grey levels,
channel mean by ~0.02, covariance by ~1e-3 of its largest entry, eigenvalues by ~0.15%,
eigenvector |cos| > 0.99999):
- DALI's resize (linear, antialiased) and PIL's BILINEAR resize are different implementations
  of nearly the same filter, and DALI's JPEG decoder may upsample chroma differently from PIL's,
  so single pixels of a 256x256 patch differ by a few grey levels. The generated images are
  smooth (gradients plus one low-frequency wave), so a half-pixel disagreement in the crop
  position costs little, while a wrong crop (not central), a wrong scale or a swapped axis
  costs tens of grey levels. Mean image: max |diff| <= 2 grey levels, mean |diff| <= 0.25.
- Channel mean and covariance average 65536 pixels per image, so the per-pixel noise mostly
  cancels: channel mean within 0.1 grey level, covariance within 0.5% of its largest entry,
  eigenvalues within 0.5%.
- Eigenvectors are defined up to sign (and are only as well-determined as the eigenvalue gaps
  allow, which the random colour mixing makes large): |cos| between matching vectors >= 0.999.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from alexnet.pipeline.dali import pipe_options, prep_pipeline
from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.loader import Loader
from alexnet.pipeline.stats import Accumulator, Stats, compute_stats, load_stats, save_stats

# (width, height, how it is saved): portrait, landscape, square, a small one that is upscaled,
# a JPEG, a greyscale JPEG, a very wide one
SPECS = [
    (300, 500, "png"),
    (500, 300, "png"),
    (256, 256, "png"),
    (100, 80, "png"),
    (640, 480, "jpg"),
    (333, 257, "grey.jpg"),
    (1000, 260, "png"),
]


def smooth_image(w: int, h: int, seed: int) -> np.ndarray:
    """uint8 HxWx3: per-channel gradients and a low-frequency wave, colours mixed at random."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    chans = [
        rng.uniform(0.2, 1) * u
        + rng.uniform(0.2, 1) * v
        + 0.3
        * np.sin(2 * np.pi * (rng.uniform(1, 3) * u + rng.uniform(1, 3) * v) + rng.uniform(0, 6))
        for _ in range(3)
    ]
    z = np.stack(chans, -1) @ rng.normal(size=(3, 3))
    return ((z - z.min()) / (z.max() - z.min()) * 235 + 10).astype(np.uint8)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("stats_images")
    files = []
    for i, (w, h, kind) in enumerate(SPECS):
        im = Image.fromarray(smooth_image(w, h, i))
        path = d / f"{i}_{w}x{h}.{kind}"
        if kind == "grey.jpg":
            im.convert("L").save(path, quality=95)
        elif kind == "jpg":
            im.save(path, quality=95)
        else:
            im.save(path)
        files.append(str(path))
    return files


def half_up(x: float) -> int:
    return math.floor(x + 0.5)


def reference_patch(path: str) -> np.ndarray:
    """float64 256x256x3: PIL decode to RGB, shorter side to 256 (bilinear, which antialiases
    when shrinking), central 256x256 crop."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        scale = 256 / min(w, h)
        nw, nh = max(256, half_up(w * scale)), max(256, half_up(h * scale))
        im = im.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = half_up((nw - 256) / 2), half_up((nh - 256) / 2)
        return np.asarray(im, dtype=np.float64)[top : top + 256, left : left + 256]


def reference_stats(files: list[str]) -> dict:
    patches = np.stack([reference_patch(f) for f in files])
    mean_image = patches.mean(axis=0)
    pixels = patches.reshape(-1, 3)
    channel_mean = pixels.mean(axis=0)
    cov = (pixels - channel_mean).T @ (pixels - channel_mean) / len(pixels)
    eigvals, eigvecs = np.linalg.eigh(cov)
    return {
        "mean_image": mean_image,
        "channel_mean": channel_mean,
        "cov": cov,
        "eigvals": eigvals[::-1],
        "eigvecs": eigvecs[:, ::-1],
    }


@pytest.fixture(scope="module")
def stats(image_files) -> Stats:
    # batch 3 does not divide 7 images: the padded last batch must not be counted
    return compute_stats(image_files, "fp-test", batch_size=3, num_threads=2, progress=False)


def test_prep_patch_of_each_image_matches_pil(image_files):
    pipe = prep_pipeline(image_files, device="cpu", **pipe_options("cpu", 3, 0, 2))
    patches = np.concatenate([b.numpy() for (b,) in Loader(pipe, outputs=("images",))])
    assert patches.shape == (len(image_files), 256, 256, 3) and patches.dtype == np.uint8
    for f, patch in zip(image_files, patches, strict=True):
        diff = np.abs(patch - reference_patch(f))
        # one image: a few grey levels per pixel (resampling filter, JPEG chroma upsampling)
        assert diff.max() <= 6 and diff.mean() <= 1.0, (f, diff.max(), diff.mean())


def test_downscaling_is_antialiased_like_pil(tmp_path):
    """Pixel noise shrunk by 0.37: an antialiased filter (PIL's bilinear, DALI's antialias=True)
    averages ~3x3 pixels, so the result is smooth and close to PIL's (measured: mean |diff| 1.2);
    plain bilinear sampling would keep the noise (mean |diff| ~33, std x2.7)."""
    noise = np.random.default_rng(0).integers(0, 256, (700, 1000, 3), dtype=np.uint8)
    path = tmp_path / "noise.png"
    Image.fromarray(noise).save(path)
    pipe = prep_pipeline([str(path)], device="cpu", **pipe_options("cpu", 1, 0, 2))
    ((patch,),) = [b.numpy() for (b,) in Loader(pipe, outputs=("images",))]
    ref = reference_patch(str(path))
    assert np.abs(patch - ref).mean() <= 2.5
    assert abs(patch.std() / ref.std() - 1) <= 0.05


def test_compute_stats_matches_numpy_and_pil(stats, image_files):
    ref = reference_stats(image_files)
    assert stats.count == len(image_files)
    assert stats.fingerprint == "fp-test"
    assert stats.mean_image.shape == (256, 256, 3) and stats.mean_image.dtype == np.float64
    diff = np.abs(stats.mean_image - ref["mean_image"])
    assert diff.max() <= 2.0 and diff.mean() <= 0.25, (diff.max(), diff.mean())
    np.testing.assert_allclose(stats.channel_mean, ref["channel_mean"], atol=0.1)
    assert np.abs(stats.cov - ref["cov"]).max() <= 5e-3 * np.abs(ref["cov"]).max()
    np.testing.assert_allclose(stats.eigvals, ref["eigvals"], rtol=5e-3)
    cos = np.abs(np.sum(stats.eigvecs * ref["eigvecs"], axis=0))
    assert (cos >= 0.999).all(), cos
    # the test images are colourful enough for the comparison to mean something
    assert ref["eigvals"][2] > 100 and ref["eigvals"][0] / ref["eigvals"][1] > 1.2


def test_channel_mean_is_the_mean_of_the_mean_image(stats):
    np.testing.assert_allclose(
        stats.channel_mean, stats.mean_image.reshape(-1, 3).mean(axis=0), rtol=1e-12
    )
    assert stats.mean("image") is stats.mean_image
    assert stats.mean("channel") is stats.channel_mean
    with pytest.raises(AlexnetError, match="mean mode"):
        stats.mean("pixel")


def test_eigendecomposition_reconstructs_cov_with_descending_eigenvalues(stats):
    v, lam = stats.eigvecs, stats.eigvals
    assert lam.shape == (3,) and v.shape == (3, 3)
    assert np.all(np.diff(lam) < 0) and lam[-1] > 0
    np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-10)
    np.testing.assert_allclose(v @ np.diag(lam) @ v.T, stats.cov, atol=1e-9 * lam[0])
    np.testing.assert_allclose(stats.cov @ v, v * lam, atol=1e-9 * lam[0])  # columns are vectors
    np.testing.assert_allclose(stats.cov, stats.cov.T, atol=0)


def test_accumulator_on_known_pixels():
    """Two 2x2 images with hand-checkable sums, fed in two batches."""
    a = np.array([[[0, 0, 0], [2, 4, 6]], [[4, 8, 0], [6, 0, 2]]], np.uint8)
    b = 2 * a
    acc = Accumulator(size=2)
    acc.add(a[None])
    acc.add(b[None])
    s = acc.result("x")
    assert s.count == 2
    np.testing.assert_allclose(s.mean_image, 1.5 * a.astype(float))
    pixels = np.concatenate([a.reshape(-1, 3), b.reshape(-1, 3)]).astype(float)
    np.testing.assert_allclose(s.channel_mean, pixels.mean(axis=0))
    np.testing.assert_allclose(s.cov, np.cov(pixels.T, bias=True), atol=1e-12)


def test_eigenvectors_stay_orthonormal_on_greyscale_data():
    for seed in range(20):  # about half of these grey datasets hit an exactly-zero column sum
        grey = np.random.default_rng(seed).integers(0, 256, (4, 16, 16, 1), dtype=np.uint8)
        acc = Accumulator(size=16)
        acc.add(np.repeat(grey, 3, axis=3))
        v = acc.result("grey").eigvecs
        np.testing.assert_allclose(v.T @ v, np.eye(3), atol=1e-9, err_msg=f"seed {seed}")


def test_save_and_load_round_trip(stats, tmp_path):
    run = tmp_path / "run"
    save_stats(stats, run)
    # both files, and no temporary files left beside them
    assert sorted(p.name for p in run.iterdir()) == ["stats.json", "stats.npz"]
    back = load_stats(run, "fp-test")
    for name in ("mean_image", "channel_mean", "cov", "eigvals", "eigvecs"):
        np.testing.assert_array_equal(getattr(back, name), getattr(stats, name), err_msg=name)
    assert back.count == stats.count and back.fingerprint == stats.fingerprint
    summary = json.loads((run / "stats.json").read_text())
    assert summary["images"] == stats.count
    np.testing.assert_allclose(summary["eigenvalues"], stats.eigvals, atol=1e-3)


def test_load_stats_refusals(stats, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(AlexnetError, match="missing"):
        load_stats(run, "fp-test")
    save_stats(stats, run)
    with pytest.raises(AlexnetError, match="other data"):
        load_stats(run, "another-fp")
    (run / "stats.npz").write_bytes(b"not an npz")
    with pytest.raises(AlexnetError, match="unreadable"):
        load_stats(run, "fp-test")


def test_compute_stats_refuses_no_files():
    with pytest.raises(AlexnetError, match="no training images"):
        compute_stats([], "fp", progress=False)


def test_stats_do_not_depend_on_batch_size(stats, image_files):
    other = compute_stats(image_files, "fp-test", batch_size=7, num_threads=2, progress=False)
    assert other.count == stats.count
    np.testing.assert_allclose(other.mean_image, stats.mean_image, atol=1e-9)
    np.testing.assert_allclose(other.cov, stats.cov, rtol=1e-9)


def test_single_image_mean_image_is_its_patch(image_files):
    one = compute_stats(image_files[:1], "one", batch_size=4, num_threads=2, progress=False)
    pipe = prep_pipeline(image_files[:1], device="cpu", **pipe_options("cpu", 1, 0, 2))
    ((patch,),) = [b.numpy() for (b,) in Loader(pipe, outputs=("images",))]
    assert one.count == 1
    np.testing.assert_array_equal(one.mean_image, patch.astype(np.float64))
