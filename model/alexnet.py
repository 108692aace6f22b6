"""The network of the paper (section 3, figure 2), with its named deviations as options.

Five convolutional and three fully connected layers; the paper's two GPU columns are grouped
convolutions (conv2, conv4, conv5 see only their own column's half); ReLU everywhere; local
response normalisation after the ReLUs of conv1 and conv2; overlapping 3/2 max-pooling;
dropout 0.5 in fc6 and fc7. With 1000 classes it has exactly 60,965,224 parameters.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .config import AlexNetConfig
from .init import LAYERS, initialise
from .lrn import LocalResponseNorm

LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 2.0

# For the test suite only (tests/conftest.py), as timm's tiny test models: every layer but fc7
# and fc8 this many times narrower (16: 77x fewer parameters, the convolutions ~50x cheaper),
# so that training, checkpoints and fc7 extraction run at test speed through the real code;
# fc7 stays 4096-d, so retrieval sees what it always does. A checkpoint records only its
# weights, so it loads under the setting it was made with.
TEST_WIDTH = "ALEXNET_TEST_WIDTH"


def test_width() -> int:
    """The divisor of $ALEXNET_TEST_WIDTH (1, the paper's widths, when unset)."""
    value = os.environ.get(TEST_WIDTH, "1")
    if value not in ("1", "2", "4", "8", "16"):  # each column keeps whole channels
        raise ValueError(f"{TEST_WIDTH} must be 1, 2, 4, 8 or 16, got {value!r}")
    return int(value)


def local_response_norm(
    size: int = LRN_SIZE, alpha: float = LRN_ALPHA, beta: float = LRN_BETA, k: float = LRN_K
) -> LocalResponseNorm:
    """The paper's LRN: b = a / (k + alpha * sum of a^2 over `size` channels)^beta.

    alpha is the paper's (not divided by `size`, unlike nn.LocalResponseNorm); the channel
    window is clipped at the edges. See model/lrn.py for why it is not nn.LocalResponseNorm.
    """
    return LocalResponseNorm(size, alpha=alpha, beta=beta, k=k)


def norm_layer(form: str) -> LocalResponseNorm:
    """The LRN of one form: the paper's (k=2, alpha as written), or Caffe's, whose
    (1 + alpha/n * sum a^2)^beta is k=1 with alpha divided by n = 5."""
    if form == "paper":
        return local_response_norm()
    if form == "caffe":
        return local_response_norm(alpha=LRN_ALPHA / LRN_SIZE, k=1.0)
    raise ValueError(f"lrn_form must be 'paper' or 'caffe', got {form!r}")


def _cpu_layout(x: torch.Tensor) -> torch.Tensor:
    """Images as NHWC on the CPU, where oneDNN's convolutions and pooling run faster on it (a
    training step ~10%, fc7 extraction ~30%; bench/speed.py). The maths is the same; on GPUs
    the callers choose the layout."""
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


FC_ROWS = 8  # fc7: rows of the fully connected layers' products, in multiples of this


class AlexNet(nn.Module):
    """The network, initialised by its config's preset.

    On `device="meta"` its layers hold no memory and are left uninitialised: the form for a
    network whose trained weights are put in next (model/checkpoint.py `build_network`), which
    skips drawing 61M random numbers only to replace them (half a second on a CPU).
    """

    def __init__(self, config: AlexNetConfig | None = None, *, device: str | None = None):
        super().__init__()
        self.config = config = config or AlexNetConfig()
        g = config.columns
        on = {"device": device}
        w = test_width()  # 1 but in tests

        def norm_pool() -> list[nn.Module]:
            norm = norm_layer(config.lrn_form) if config.lrn else nn.Identity()
            pool = nn.MaxPool2d(3, 2, ceil_mode=config.pool_ceil)
            return [pool, norm] if config.pool_before_norm else [norm, pool]

        self.features = nn.Sequential(
            nn.Conv2d(3, 96 // w, 11, stride=4, padding=config.conv1_padding, **on),  # 224 -> 55
            nn.ReLU(inplace=True),
            *norm_pool(),  # 27
            nn.Conv2d(96 // w, 256 // w, 5, padding=2, groups=g, **on),  # conv2: 2 columns of 128
            nn.ReLU(inplace=True),
            *norm_pool(),  # 13
            nn.Conv2d(256 // w, 384 // w, 3, padding=1, **on),  # conv3 sees both columns
            nn.ReLU(inplace=True),
            nn.Conv2d(384 // w, 384 // w, 3, padding=1, groups=g, **on),  # conv4
            nn.ReLU(inplace=True),
            nn.Conv2d(384 // w, 256 // w, 3, padding=1, groups=g, **on),  # conv5
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, ceil_mode=config.pool_ceil),  # 6
        )
        self.classifier = nn.Sequential(
            nn.Dropout(config.dropout),
            nn.Linear(256 // w * 6 * 6, 4096 // w, **on),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(config.dropout),
            nn.Linear(4096 // w, 4096, **on),  # fc7: the last hidden layer, the retrieval feature
            nn.ReLU(inplace=True),
            nn.Linear(4096, config.num_classes, **on),  # fc8
        )
        if device != "meta":
            self.reset_parameters()

    def layers(self) -> dict[str, nn.Conv2d | nn.Linear]:
        """The eight learned layers by the paper's names, conv1 ... fc8."""
        learned = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return dict(zip(LAYERS, learned, strict=True))

    def reset_parameters(self) -> None:
        """The config's initialisation preset; the paper's by default: weights N(0, 0.01),
        biases 1 in conv2, conv4, conv5, fc6 and fc7, 0 in conv1, conv3 and fc8 (section 5)."""
        initialise(self.layers(), self.config.init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(_cpu_layout(x)), 1))

    @torch.no_grad()
    def fc7(self, x: torch.Tensor) -> torch.Tensor:
        """The 4096-d last-hidden-layer activations (after ReLU, dropout off).

        Each image's vector is the same bits in any batch: the conv stack treats each image
        alone, but a matrix product's row depends on how many rows it is computed with (MKL's
        kernels on x86 take rows in blocks, and a partial block rounds differently), so the
        fully connected layers always see a multiple of FC_ROWS rows, the batch padded by
        repeating its last image (tests/test_images.py checks the bits), for a few rows'
        cost: those layers mostly cost reading their weights."""
        n = len(x)
        h = torch.flatten(self.features(_cpu_layout(x)), 1)
        h = torch.cat([h, h[-1:].expand(-n % FC_ROWS, -1)])
        for layer in self.classifier[:-1]:
            if not isinstance(layer, nn.Dropout):
                h = layer(h)
        return h[:n]
