"""The published reference network as a run: .caffemodel files in both encodings and a model
zoo ONNX file, written here with random weights in their real formats (tests/caffe_files.py),
imported, and checked against Caffe's forward pass computed independently; hostile files; the
run used by predict, galleries, eval --data, fine-tuning and ONNX export. The files are of the
test suite's narrow network (tests/caffe_files.py), but for one import of both Caffe encodings
at the published network's full size."""

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import torch
from caffe_files import (
    caffe_forward,
    f_bytes,
    layer_list,
    mean_binaryproto,
    random_weights,
    relative_error,
    tag,
    varint,
    width,
    write_caffemodel,
    write_zoo_onnx,
)
from click.testing import CliRunner
from fixtures import alexnet_cmd, make_images, prep_run
from PIL import Image

from alexnet.cli.main import cli
from alexnet.model.inference import load_trained, query_crops
from alexnet.model.reference import import_weights
from alexnet.pipeline.stats import load_stats

CLASSES = 10
WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079"]
WNIDS += ["n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]
TOLERANCE = 1e-4  # max |difference| over max |reference|


@pytest.fixture(scope="module")
def weights():
    return random_weights(CLASSES)


@pytest.fixture(scope="module")
def full_size_weights():
    """The published network's shapes (for tests marked full_size: tests/conftest.py)."""
    return random_weights(CLASSES)


@pytest.fixture(scope="module")
def caffemodel(weights, tmp_path_factory):
    return write_caffemodel(tmp_path_factory.mktemp("net") / "bvlc.caffemodel", weights)


def crops(files, side: int) -> torch.Tensor:
    """Real photos as mean-subtracted RGB crops (N, 3, side, side), made without the toolkit."""
    mean = np.array([122.7, 116.7, 104.0], np.float32)
    images = [
        np.asarray(Image.open(f).convert("RGB").resize((side, side)), np.float32) for f in files
    ]
    return torch.from_numpy(np.stack(images) - mean).permute(0, 3, 1, 2).contiguous()


def outputs(run, x):
    model = load_trained(run, check_files=False).model
    with torch.no_grad():
        return model.fc7(x), model(x)


def assert_matches(got, want):
    for g, w, what in zip(got, want, ("fc7", "logits"), strict=True):
        assert relative_error(g, w) <= TOLERANCE, what


@pytest.mark.full_size  # the published network's shapes, in both encodings
@pytest.mark.parametrize("encoding", ["current", "v1-unpacked"])
def test_caffe_model_gives_caffes_fc7_and_logits(tmp_path, full_size_weights, real_jpegs, encoding):
    weights = full_size_weights
    v1 = encoding.startswith("v1")
    path = write_caffemodel(tmp_path / "net.caffemodel", weights, v1=v1, packed=not v1)
    import_weights(path, tmp_path / "run")
    trained = load_trained(tmp_path / "run", check_files=False)
    c = trained.config
    assert (c.crop, c.conv1_padding, c.lrn_form, c.pool_before_norm) == (227, 0, "caffe", False)
    saved = torch.load(trained.checkpoint, weights_only=True, mmap=True)
    assert saved["imported"]["bgr_flipped"] and saved["imported"]["format"].startswith("caffe")
    x = crops(real_jpegs[::5], 227)
    assert_matches(outputs(tmp_path / "run", x), caffe_forward(weights, x.flip(1)))


def test_caffenet_order_is_a_model_setting(tmp_path, weights, real_jpegs):
    path = write_caffemodel(tmp_path / "caffenet.caffemodel", weights, caffenet=True)
    import_weights(path, tmp_path / "run")
    assert load_trained(tmp_path / "run", check_files=False).config.pool_before_norm
    x = crops(real_jpegs[:2], 227)
    assert_matches(outputs(tmp_path / "run", x), caffe_forward(weights, x.flip(1), caffenet=True))


def test_zoo_onnx_file_gives_its_own_outputs(tmp_path, weights, real_jpegs):
    import onnxruntime as ort

    path = write_zoo_onnx(tmp_path / "bvlcalexnet-12.onnx", weights, fc7_output=True)
    import_weights(path, tmp_path / "run")
    c = load_trained(tmp_path / "run", check_files=False).config
    assert (c.crop, c.conv1_padding, c.pool_ceil, c.lrn_form) == (224, 0, True, "caffe")
    x = crops(real_jpegs[:3], 224)
    fc7, logits = outputs(tmp_path / "run", x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for i in range(len(x)):  # the zoo's graph takes one BGR image
        prob, theirs_fc7 = session.run(None, {"data_0": x[i : i + 1].flip(1).numpy()})
        assert relative_error(fc7[i : i + 1], torch.from_numpy(theirs_fc7).double()) <= TOLERANCE
        assert relative_error(logits[i : i + 1].softmax(1), torch.from_numpy(prob).double()) <= 1e-4
    assert_matches((fc7, logits), caffe_forward(weights, x.flip(1), conv1_pad=0))


def test_mean_and_labels_become_the_runs_statistics_and_classes(tmp_path, caffemodel):
    grad = np.linspace(0, 1, 256)[None, :, None] * np.ones((1, 1, 256))
    mean_bgr = np.concatenate([10 + grad, 20 + grad, 30 + grad])  # 3x256x256, BGR
    (tmp_path / "mean.binaryproto").write_bytes(mean_binaryproto(mean_bgr))
    words = tmp_path / "synset_words.txt"
    words.write_text("".join(f"{w} name {i}, other\n" for i, w in enumerate(WNIDS)))
    import_weights(caffemodel, tmp_path / "run", mean=tmp_path / "mean.binaryproto", labels=words)
    trained = load_trained(tmp_path / "run", check_files=False)
    stats = load_stats(tmp_path / "run", trained.manifest.fingerprint)
    assert trained.config.mean == "image" and stats.mean_image.shape == (256, 256, 3)
    np.testing.assert_allclose(stats.mean_image[..., 0], 30 + grad[0], atol=1e-5)  # R
    np.testing.assert_allclose(stats.mean_image[..., 2], 10 + grad[0], atol=1e-5)  # B
    assert trained.classes == WNIDS and trained.class_names[1] == "name 1"
    # wnids alone are named from WordNet
    words.write_text("\n".join(WNIDS))
    import_weights(caffemodel, tmp_path / "run", labels=words, force=True)
    names = load_trained(tmp_path / "run", check_files=False).class_names
    assert names[:2] == ["tench", "English springer"]
    assert load_trained(tmp_path / "run", check_files=False).config.mean == "channel"


def write_hostile(folder, caffemodel, case: str):
    """One damaged or foreign file; only what the case needs is written."""
    w = random_weights(CLASSES)
    if case == "wrong count":  # 96x3x11x11 declared, 96x3x11x10 values stored (96: narrowed)
        short = {"conv1": (w["conv1"][0][..., :10], w["conv1"][1])}
        shapes = {"conv1": (w["conv1"][0].shape, w["conv1"][1].shape)}
        return write_caffemodel(folder / "wrong count.caffemodel", short, shapes=shapes, v1=True)
    if case == "another net":  # conv1 of 64 filters, no LRN, one fully connected layer
        layers = [("conv1", "Convolution", {"conv": (64, 11, 4, 2, 1)}), ("relu1", "ReLU", {})]
        layers += [("pool1", "Pooling", {"pool": (3, 2)}), ("fc8", "InnerProduct", {"fc": 10})]
        small = {"conv1": (w["conv1"][0][:64], w["conv1"][1][:64]), "fc8": w["fc8"]}
        return write_caffemodel(folder / "another net.caffemodel", small, layers=layers)
    content = {
        "truncated": caffemodel.read_bytes()[: caffemodel.stat().st_size // 2],
        "empty": b"",
        "a prefix of 2 GB": f_bytes(1, b"AlexNet") + tag(100, 2) + varint(2**31) + b"\0" * 64,
        "not a protobuf": b"\xff" * 100,
        "garbage": b"\x08\x07garbage" * 10,
    }[case]
    path = folder / (f"{case}.onnx" if case == "garbage" else f"{case}.caffemodel")
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "truncated"),
        ("empty", "empty"),
        ("a prefix of 2 GB", "runs past the end"),
        ("not a protobuf", "not a readable Caffe model"),
        ("wrong count", f"conv1 weight has {96 // width() * 3 * 11 * 10:,} values"),
        ("another net", "is not AlexNet: its layers run conv relu pool fc"),
        ("garbage", "not a readable ONNX model"),
    ],
)
def test_hostile_files_are_one_line_and_write_nothing(tmp_path, caffemodel, case, message):
    path = write_hostile(tmp_path, caffemodel, case)
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["import-weights", str(path), "--run", str(run)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert message in lines[0], lines[0]
    assert not run.exists()


def test_an_imported_run_predicts_and_searches_a_gallery(tmp_path, caffemodel, real_jpegs):
    run = tmp_path / "run"
    cmd = lambda *a: CliRunner().invoke(cli, [str(x) for x in a])  # noqa: E731  (in this process)
    done = cmd("import-weights", caffemodel, "--run", run, "-q")
    assert done.exit_code == 0 and "227x227 crops" in done.stdout, done.output
    done = cmd("predict", real_jpegs[0], "--run", run, "--json", "--top", "3", "-q")
    assert done.exit_code == 0, done.output
    top = json.loads(done.stdout)["images"][0]["top"]
    assert len(top) == 3 and top[0]["class_id"].startswith("class_")
    photos = tmp_path / "photos"
    photos.mkdir()
    for f in real_jpegs[::2]:
        (photos / f.split("/")[-1]).symlink_to(f)
    done = cmd("index", "--run", run, "--images", photos, "--name", "photos", "-q")
    assert done.exit_code == 0 and "10 images" in done.stdout, done.output
    # no labels: the codes' method is chosen (here: too few photos to measure), and said
    assert "codes chosen without labels: autoencoder (10 photos, fewer than 100" in done.stdout
    record = json.loads((run / "index" / "codes.json").read_text())
    assert record["code_choice"]["chosen"] == "autoencoder"
    query = photos / real_jpegs[4].split("/")[-1]
    done = cmd("search", query, "--run", run, "--gallery", "photos", "-k", "3", "--json", "-q")
    assert done.exit_code == 0, done.output
    hits = json.loads(done.stdout)["queries"][0]["results"]
    assert hits[0]["path"].endswith(query.name) and hits[0]["hamming"] == 0


def test_eval_on_a_labelled_folder_of_wnids(tmp_path, caffemodel):
    words = tmp_path / "synset_words.txt"
    words.write_text("\n".join(WNIDS))
    import_weights(caffemodel, tmp_path / "run", labels=words)
    from conftest import IMAGENETTE

    data = tmp_path / "val"
    for wnid in WNIDS[:2]:
        (data / wnid).mkdir(parents=True)
        for f in sorted((IMAGENETTE / "val" / wnid).iterdir())[:3]:
            (data / wnid / f.name).symlink_to(f)
    result = CliRunner().invoke(
        cli, ["-q", "eval", "--run", str(tmp_path / "run"), "--data", str(data), "--no-ten-crop"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["centre"]["images"] == 6 and report["data"] == str(data)
    assert {c["class"] for c in report["classes"]} <= {"tench", "English springer"}


def test_fine_tuning_keeps_the_imported_settings(tmp_path, caffemodel):
    from alexnet.model.config import TrainConfig
    from alexnet.model.train import fit

    import_weights(caffemodel, tmp_path / "ref")
    new = prep_run(make_images(tmp_path / "data", train=4, val=2), tmp_path / "new")
    config = TrainConfig(
        epochs=1,
        batch_size=4,
        init_checkpoint=str(tmp_path / "ref"),
        train_layers="fc7,fc8",
        pretrained_lr_mult=0.1,
        num_threads=1,
    )
    fit(new, config, progress=False, final_ten_crop=False)
    before = torch.load(tmp_path / "ref/checkpoints/best.pt", weights_only=True)["model"]
    after = torch.load(new / "checkpoints/last.pt", weights_only=True)
    c = after["config"]["network"]  # the network's settings, nested in the training config
    assert (c["crop"], c["lrn_form"], c["conv1_padding"]) == (227, "caffe", 0)
    model = after["model"]
    for key in ("features.0.weight", "features.4.weight", "classifier.1.weight"):  # frozen
        assert torch.equal(model[key], before[key]), key
    assert not torch.equal(model["classifier.4.weight"], before["classifier.4.weight"])  # fc7
    assert model["classifier.6.weight"].shape == (2, 4096)  # fc8: afresh for 2 classes


def paper_form_run(tmp_path, weights) -> object:
    """A run whose LRN is the paper's (k=2, alpha 1e-4 undivided), from a Caffe file."""
    layers = layer_list(lrn=(5, 5e-4, 0.75, 2.0))
    path = write_caffemodel(tmp_path / "paper.caffemodel", weights, layers=layers)
    import_weights(path, tmp_path / "paper")
    assert load_trained(tmp_path / "paper", check_files=False).config.lrn_form == "paper"
    return tmp_path / "paper"


@pytest.mark.parametrize("form", ["caffe", "paper"])
def test_onnx_export_matches_the_network(tmp_path, caffemodel, weights, real_jpegs, form):
    import onnxruntime as ort

    run = tmp_path / "run"
    if form == "caffe":
        import_weights(caffemodel, run)
    else:
        run = paper_form_run(tmp_path, weights)
    trained = load_trained(run, check_files=False)
    x = query_crops(trained, 3)([np.fromfile(f, np.uint8) for f in real_jpegs[1:4]])
    with torch.no_grad():
        want = {"logits": trained.model(x), "fc7": trained.model.fc7(x)}
    for output in ("logits", "fc7"):
        out = tmp_path / f"{output}.onnx"
        result = CliRunner().invoke(
            cli, ["export-onnx", "--run", str(run), str(out), "--output", output]
        )
        assert result.exit_code == 0, result.output
        session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        for batch in (x, x[:1]):  # the batch is dynamic
            (got,) = session.run(None, {"images": batch.numpy()})
            reference = want[output][: len(batch)]
            assert relative_error(torch.from_numpy(got), reference.double()) <= TOLERANCE
    lrn = [n for n in __import__("onnx").load(str(out)).graph.node if n.op_type == "LRN"][0]
    attrs = {a.name: a.f for a in lrn.attribute if a.name in ("alpha", "bias")}
    assert attrs == pytest.approx(
        {"caffe": {"alpha": 1e-4, "bias": 1.0}, "paper": {"alpha": 5e-4, "bias": 2.0}}[form]
    )
    shutil.rmtree(run)


def test_published_classes_are_named_without_wordnet(tmp_path, real_jpegs):
    """A 1,000-class network imported without a labels file gets ILSVRC-2012's wnids, named
    from the table the package ships: `predict` prints "cassette player" with no WordNet."""
    from alexnet.pipeline.wordnet import ilsvrc2012_words

    wnids = list(ilsvrc2012_words())
    assert len(wnids) == 1000 and wnids == sorted(wnids)
    cassette = wnids.index("n02979186")
    w = random_weights(1000)
    bias = np.zeros(1000, np.float32)
    bias[cassette] = 100.0  # whatever the photo, the network says "cassette player"
    w["fc8"] = (np.zeros_like(w["fc8"][0]), bias)
    model = write_caffemodel(tmp_path / "bvlc.caffemodel", w)
    env = {**os.environ, "ALEXNET_WORDNET": str(tmp_path / "no-wordnet" / "data.noun")}
    cmd = lambda *a: subprocess.run(  # noqa: E731
        alexnet_cmd(*map(str, a)), capture_output=True, text=True, env=env
    )
    done = cmd("import-weights", model, "--run", tmp_path / "run", "-q")
    assert done.returncode == 0, done.stderr
    done = cmd("predict", real_jpegs[0], "--run", tmp_path / "run", "--top", "1", "-q")
    assert done.returncode == 0, done.stderr
    assert "100.0%  cassette player (n02979186)" in done.stdout, done.stdout
    names = load_trained(tmp_path / "run", check_files=False).class_names
    assert names[0] == "tench" and not any(n.startswith("n0") for n in names)
    assert "crane (n02012849)" in names and "crane (n03126707)" in names  # two cranes


def test_an_imported_caffe_run_crops_as_caffe_tests(tmp_path, caffemodel, real_jpegs):
    """Caffe's test phase: the whole image squashed to 256x256, the 227 crop at offset
    (256 - 227) // 2 = 14 (data_transformer.cpp), where the paper's protocol takes the
    shorter side's central patch and DALI's centre rounds 14.5 up to 15."""
    from alexnet.model.inference import encoded

    photo = Image.open(real_jpegs[0]).convert("RGB")
    square, wide = (photo.resize(size, Image.BILINEAR) for size in ((256, 256), (400, 250)))
    square.save(tmp_path / "square.png")  # lossless, so the squash of it is itself
    wide.save(tmp_path / "wide.png")
    images = [encoded(str(tmp_path / name)) for name in ("square.png", "wide.png")]
    mean = np.array([122.7, 116.7, 104.0], np.float32)  # the channel mean, RGB

    def pixels(protocol):
        import_weights(caffemodel, tmp_path / protocol, eval_protocol=protocol)
        trained = load_trained(tmp_path / protocol, check_files=False)
        assert trained.config.crop == 227
        x = query_crops(trained, 2)(images).numpy().transpose(0, 2, 3, 1)
        return trained.config.eval_protocol, x + mean

    assert import_weights(caffemodel, tmp_path / "default")["eval_protocol"] == "caffe"
    protocol, got = pixels("caffe")
    assert protocol == "caffe"
    a = np.asarray(square, np.float32)
    np.testing.assert_allclose(got[0], a[14:241, 14:241], atol=1e-3)
    # the wide photo squashed, not cropped: PIL's resize of it, to resampling differences
    b = np.asarray(wide.resize((256, 256), Image.BILINEAR), np.float32)
    assert np.abs(got[1] - b[14:241, 14:241]).mean() < 1.0
    assert np.abs(got[1] - b[15:242, 15:242]).mean() > 5.0
    _, paper = pixels("paper")
    np.testing.assert_allclose(paper[0], a[15:242, 15:242], atol=1e-3)
