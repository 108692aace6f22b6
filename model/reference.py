"""The published reference network as a run: `import_weights` turns Caffe's
bvlc_alexnet.caffemodel (either NetParameter encoding, model/caffe.py) or the ONNX model zoo's
bvlcalexnet-*.onnx (model/onnx_io.py) into RUN/checkpoints/best.pt, RUN/stats.npz and a
manifest that lists its classes (and no images), so that every inference command, galleries
and fine-tuning from it (`init_checkpoint`) work on it as on a trained run.

Its conventions become model settings stored in the checkpoint's config (model/alexnet.py):
Caffe's LRN form (k=1, alpha divided by n), 227 crops with an unpadded conv1 (the zoo file:
224 crops, and pooling that rounds up, read from the file), and CaffeNet's pool-before-norm
order. Caffe networks take BGR images: conv1's input channels are flipped here, so the
pipelines stay RGB; the checkpoint records it under "imported".

Every blob is checked against the network's shapes and the layer order against AlexNet's
(or CaffeNet's), before anything is written: a file of another network, a truncated one or
one with a wrong element count is one AlexnetError naming what was found.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from alexnet.pipeline.errors import AlexnetError
from alexnet.pipeline.layout import RunPaths

from .caffe import Malformed, read_mean_binaryproto
from .reference_spec import Reference

log = logging.getLogger(__name__)

BGR_MEAN = (104.0, 116.7, 122.7)  # ImageNet's channel mean in Caffe's BGR order


def read_reference(path: Path) -> Reference:
    if not path.is_file():
        raise AlexnetError(f"{path} is not a file: pass a .caffemodel or an .onnx file")
    if path.suffix.lower() == ".onnx":
        from .onnx_io import read_onnx

        return read_onnx(path)
    from .caffe_net import read_caffe

    return read_caffe(path)


def read_mean(path: Path | None) -> tuple[np.ndarray, str]:
    """The mean to subtract (256x256x3 RGB, 0-255, or 3 RGB values) and the `mean` mode."""
    if path is None:
        return np.array(BGR_MEAN[::-1]), "channel"
    try:
        if path.suffix.lower() == ".npy":
            mean = np.load(path, allow_pickle=False).astype(np.float64)
            if mean.shape == (3,):  # Caffe's per-channel means are BGR
                return mean[::-1].copy(), "channel"
            if mean.ndim == 3 and mean.shape[0] == 3:  # Caffe's python mean: BGR, CHW
                mean = mean[::-1].transpose(1, 2, 0)
        else:
            mean = read_mean_binaryproto(path)
    except (Malformed, OSError, ValueError) as e:
        raise AlexnetError(
            f"{path} is not a readable mean file ({e}): pass {{mean}} as a "
            ".binaryproto or .npy, or leave it out for the channel mean"
        ) from None
    if mean.shape != (256, 256, 3):
        raise AlexnetError(
            f"{path} holds a mean of shape {mean.shape}, not 256x256 with 3 channels: "
            "pass another {mean}, or leave it out for the channel mean"
        )
    return mean, "image"


def read_labels(path: Path | None, count: int) -> tuple[list[str], dict[str, str]]:
    """Class ids and names: synset_words.txt lines ("n01440764 tench, Tinca tinca"), ids alone
    (wnids are named from WordNet), or without a file the ILSVRC-2012 wnids in class-index
    order for a network of 1,000 classes (the published ones), class_0..class_{count-1} for
    any other."""
    from alexnet.pipeline.imagenet import first_synonym
    from alexnet.pipeline.wordnet import ilsvrc2012_words

    if path is None:
        if count == len(ilsvrc2012_words()):
            return list(ilsvrc2012_words()), {}
        return [f"class_{i}" for i in range(count)], {}
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise AlexnetError(f"{path} cannot be read as a text file of class names ({e})") from None
    if len(lines) != count:
        raise AlexnetError(
            f"{path} lists {len(lines)} classes, the network has {count}: pass the "
            "{labels} file that belongs to it"
        )
    pairs = [(ln.split(maxsplit=1) + [""])[:2] for ln in lines]
    classes = [p[0] for p in pairs]
    if len(set(classes)) != count:
        raise AlexnetError(f"{path} lists a class id twice: one 'id name' line per class")
    return classes, {c: first_synonym(n) for c, n in pairs if n}


def reference_manifest(classes: list[str], names: dict[str, str], source: str):
    """A manifest that lists the classes and no images."""
    from alexnet.pipeline import imagenet
    from alexnet.pipeline.manifest import FileTable, Manifest

    empty = FileTable(
        [],
        np.zeros(0, np.int32),
        np.zeros(0, np.uint8),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
    )
    return Manifest(
        root="",
        layout="imported weights",
        val_fraction=None,
        seed=0,
        classes=classes,
        class_names=imagenet.display_names(classes, names),
        labels_from=None,
        names_from=source,
        counts={c: {"train": 0, "val": 0} for c in classes},
        files=empty,
        skipped=[],
    )


def import_weights(
    file: str | Path,
    run: str | Path,
    *,
    mean: str | Path | None = None,
    labels: str | Path | None = None,
    force: bool = False,
    eval_protocol: str | None = None,
) -> dict:
    """Make RUN a run of the network in `file` (.caffemodel or .onnx): RUN/checkpoints/best.pt,
    RUN/stats.npz (the `mean`: a .binaryproto or .npy mean image, default ImageNet's channel
    mean) and a manifest of its classes (`labels`: synset_words.txt). Everything is read and
    checked before anything is written, and the manifest written last: an interrupted import
    leaves no run, which the next import replaces. A RUN that is already a run is refused
    unless `force`. `eval_protocol` (TrainConfig's): default caffe for a Caffe file, whose
    network was tested on squashed images, else paper.
    Returns {"run", "checkpoint", "classes", "settings", "format", "eval_protocol"}."""
    import torch

    from alexnet.pipeline.lock import RunLock
    from alexnet.pipeline.manifest import save_manifest
    from alexnet.pipeline.stats import Stats, save_stats
    from alexnet.pipeline.testpoints import reached

    from .alexnet import AlexNet
    from .checkpoint import checkpoint_state, save_checkpoint
    from .config import AlexNetConfig, TrainConfig
    from .finetune import layer_keys

    file, paths = Path(file), RunPaths(run)
    if paths.manifest.exists() and not force:
        raise AlexnetError(
            f"{paths.root} is already a run: import into a new {{run}}, or pass {{force}} to "
            "replace it"
        )
    ref = read_reference(file)
    mean_values, mean_mode = read_mean(Path(mean) if mean else None)
    classes, names = read_labels(Path(labels) if labels else None, ref.num_classes)
    manifest = reference_manifest(classes, names, str(labels) if labels else None)

    if eval_protocol is None:
        eval_protocol = "caffe" if ref.source["format"].startswith("caffe") else "paper"
    if eval_protocol not in ("paper", "caffe"):
        raise AlexnetError(f"{{eval_protocol}} is paper or caffe, not {eval_protocol!r}")
    network = AlexNetConfig(num_classes=ref.num_classes, init="caffe", **ref.settings)
    config = TrainConfig(mean=mean_mode, network=network, eval_protocol=eval_protocol)
    net = AlexNet(network, device="meta")
    state = {}
    for (name, key), (w, b) in zip(layer_keys(net).items(), ref.weights.values(), strict=True):
        if name == "conv1" and ref.bgr:  # BGR in, RGB kept: the pipelines feed RGB
            w = np.ascontiguousarray(w[:, ::-1])
        w, b = (a if a.flags.writeable else a.copy() for a in (w, b))  # ONNX's are read-only
        state[f"{key}.weight"], state[f"{key}.bias"] = torch.from_numpy(w), torch.from_numpy(b)
    net.load_state_dict(state, assign=True)  # the names and shapes, checked once more

    image = mean_values if mean_mode == "image" else np.broadcast_to(mean_values, (256, 256, 3))
    stats = Stats(
        np.ascontiguousarray(image, np.float64),
        np.asarray(image, np.float64).reshape(-1, 3).mean(0),
        np.zeros((3, 3)),
        np.zeros(3),
        np.eye(3),
        0,
        manifest.fingerprint,
    )
    imported = {
        "file": str(file.resolve()),
        **ref.source,
        "bgr_flipped": ref.bgr,
        "mean": str(mean) if mean else f"BGR channel mean {BGR_MEAN}",
    }
    checkpoint = checkpoint_state(net, config, manifest, imported=imported)
    reached("import checked")
    with RunLock(run, "import-weights"):
        # The manifest goes first and comes back last: until then RUN is no run, so an
        # interrupted import is imported again without `force`.
        for stale in (paths.manifest, paths.last, paths.best):
            stale.unlink(missing_ok=True)
        save_stats(stats, run)
        save_checkpoint(paths.best, checkpoint)
        save_manifest(manifest, run)
    log.info("imported %s (%s) into %s", file, ref.source.get("format"), paths.best)
    return {
        "run": str(paths.root),
        "checkpoint": str(paths.best),
        "classes": ref.num_classes,
        "settings": ref.settings,
        "format": ref.source.get("format"),
        "eval_protocol": eval_protocol,
        "mean": mean_mode,
        "names": manifest.class_names[:3],
    }
