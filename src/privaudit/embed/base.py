"""The embedder interface: declared preprocessing, a weights fingerprint, frozen inference.

An embedder maps working-format images (2D float32 in [0, 1]) to unit-length float32 vectors, so
that the inner product of two embeddings is their cosine similarity. Subclasses declare

* ``name`` (the registry key) and ``version`` (bump when outputs change for the same weights),
* ``preprocessing``: the input size, the number of channels (grey is repeated to 3 for ImageNet
  models) and the per-channel normalisation,
* ``dim``, the output dimension,
* ``weights_sha256()``, the hash of the weights file (``None`` for weight-free embedders),

and implement :meth:`Embedder.forward` on a preprocessed ``(B, C, H, W)`` batch. Embedders that
learn from the audit's own training images set ``requires_fit`` and implement :meth:`fit`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from privaudit._version import __version__
from privaudit.data.imageset import ImageSet
from privaudit.errors import ConfigError
from privaudit.registry import Registry

if TYPE_CHECKING:
    from privaudit.embed.cache import EmbeddingCache


@dataclass(frozen=True)
class Preprocessing:
    """How images are prepared for an embedder.

    Attributes:
        size: ``(height, width)`` that every image is resized to (bilinear with antialiasing,
            so that downsampling averages rather than aliases).
        channels: 1, or 3 to repeat the grey channel (for models trained on RGB).
        mean: per-channel mean subtracted after resizing (values are in [0, 1] before).
        std: per-channel standard deviation divided by.
    """

    size: tuple[int, int]
    channels: int = 1
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3; got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(
                f"mean and std need one value per channel ({self.channels}); "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if min(self.size) < 1:
            raise ValueError(f"size must be positive; got {self.size}")

    def apply(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """Resize, repeat channels and normalise a batch of working-format images."""
        h, w = self.size
        if len({img.shape for img in images}) == 1:
            batch = torch.from_numpy(np.stack(images))[:, None]
            resized = _resize(batch, h, w)
        else:  # mixed sizes: resize one by one
            resized = torch.cat([_resize(torch.from_numpy(np.array(img, dtype=np.float32))[None, None], h, w) for img in images])
        if self.channels == 3:
            resized = resized.expand(-1, 3, -1, -1)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1)
        return ((resized - mean) / std).contiguous()


def select(images: Sequence[np.ndarray], indices: Sequence[int] | np.ndarray) -> Sequence[np.ndarray]:
    """``images`` at ``indices``, without reading a lazy set: its view is read when used."""
    from privaudit.data.lazy import LazyImages

    if isinstance(images, LazyImages):
        return images.take(indices)
    return [images[int(i)] for i in indices]


def resized(images: Sequence[np.ndarray], size: int, *, batch_size: int = 256) -> np.ndarray:
    """Working-format images resized to ``(n, size, size)`` float32, ``batch_size`` read and
    resized at a time: a lazy set of large images is never held at full size (5,000 images of
    2048 x 2048 would be 80 GB; at 64 x 64 they are 80 MB)."""
    prep = Preprocessing(size=(size, size))
    out = np.empty((len(images), size, size), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        out[start : start + batch_size] = prep.apply(images[start : start + batch_size])[:, 0].numpy()
    return out


def _resize(batch: torch.Tensor, h: int, w: int) -> torch.Tensor:
    if batch.shape[-2:] == (h, w):
        return batch.clone()
    return F.interpolate(batch, size=(h, w), mode="bilinear", antialias=True, align_corners=False)


@dataclass(frozen=True)
class EmbedderInfo:
    """What ``results.json`` records about the embedding space the checks ran in."""

    name: str
    version: str
    dim: int
    fingerprint: str
    weights_sha256: str | None
    preprocessing: Preprocessing
    description: str


class Embedder(ABC):
    """Base class of all embedders (see the module docstring).

    Example:
        >>> from privaudit.embed import get_embedder
        >>> emb = get_embedder("pixels")
        >>> vectors = emb.embed([np.zeros((16, 16), np.float32), np.eye(16, dtype=np.float32)])
        >>> vectors.shape, vectors.dtype
        ((2, 1024), dtype('float32'))
    """

    name: ClassVar[str]
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ""
    #: A frozen dataclass of the embedder's options (``[embedder_options.<name>]`` in a config
    #: file), or ``None`` for embedders without options.
    Options: ClassVar[type | None] = None
    #: Whether :meth:`fit` must be called on the training set before :meth:`embed`.
    requires_fit: ClassVar[bool] = False
    #: Cosine similarity at or above which two images count as near-duplicates in this space.
    #: It is a property of the space (a re-encoded or re-scaled image stays above it; two scans
    #: stay below it) and is used only to clean the null of the copies check.
    near_duplicate_similarity: ClassVar[float] = 0.99
    #: Images per forward pass at most, whatever ``batch_size`` asks for: a CNN's activations at
    #: its input size grow with the batch (EfficientNet-Lite0 at 224 px held 4.6 GB for 256
    #: images), its throughput on a CPU does not. ``None``: no cap.
    max_batch: ClassVar[int | None] = None
    #: Whether ``--cluster`` sends this embedder's work to the cluster. ``False`` for embedders
    #: that cost less to run here than their input costs to ship (``pixels``).
    offload: ClassVar[bool] = True

    preprocessing: Preprocessing
    dim: int

    def __init__(self, *, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)

    def weights_sha256(self) -> str | None:
        """SHA-256 of the weights file, or ``None`` when the embedder has no weights."""
        return None

    def fit_key(self) -> str | None:
        """For fitted embedders, the key of the fit (training set hash, options, seed, version);
        ``None`` for embedders that do not learn from the audit's images."""
        return None

    def fingerprint(self) -> str:
        """A hash of everything that determines the outputs: name, version, preprocessing,
        weights (or the fit key of a fitted embedder) and privaudit's major.minor version.
        The embedding cache keys on it."""
        if self.requires_fit and self.fit_key() is None:
            raise RuntimeError(f"embedder {self.name!r} has no fingerprint before it is fitted")
        spec = {
            "name": self.name,
            "version": self.version,
            "dim": self.dim,
            "preprocessing": asdict(self.preprocessing),
            "weights_sha256": self.weights_sha256(),
            "fit_key": self.fit_key(),
            "privaudit": ".".join(__version__.split(".")[:2]),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

    def info(self) -> EmbedderInfo:
        """The embedder's description for the result."""
        return EmbedderInfo(
            name=self.name,
            version=self.version,
            dim=self.dim,
            fingerprint=self.fingerprint(),
            weights_sha256=self.weights_sha256(),
            preprocessing=self.preprocessing,
            description=self.description,
        )

    def fit(self, train: ImageSet, *, seed: int, cache: EmbeddingCache | None = None) -> None:
        """Learn from the training set (only for embedders with ``requires_fit``).

        Fitting sees the training images only, never the synthetic or holdout images that are
        judged. The result is deterministic for a seed, and cached in ``cache`` under
        :meth:`fit_key`.
        """
        return None

    @abstractmethod
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Map a preprocessed ``(B, C, H, W)`` batch to ``(B, dim)`` features (not yet normalised)."""

    def embed(self, images: ImageSet | Sequence[np.ndarray], *, batch_size: int = 256) -> np.ndarray:
        """Embed images into unit-length ``float32`` vectors of shape ``(N, dim)``.

        Runs under ``torch.inference_mode()``; the result does not depend on ``batch_size``
        beyond floating-point reduction order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1; got {batch_size}")
        if self.max_batch is not None:
            batch_size = min(batch_size, self.max_batch)
        seq = images.images if isinstance(images, ImageSet) else images
        out = np.empty((len(seq), self.dim), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(seq), batch_size):
                chunk = seq[start : start + batch_size]
                batch = self.preprocessing.apply(chunk).to(self.device)
                features = self.forward(batch).float()
                if features.ndim != 2 or features.shape != (len(chunk), self.dim):
                    raise RuntimeError(
                        f"embedder {self.name!r} returned {tuple(features.shape)}; expected ({len(chunk)}, {self.dim})"
                    )
                out[start : start + len(chunk)] = F.normalize(features, dim=1).cpu().numpy()
        return out


EMBEDDERS: Registry[type[Embedder]] = Registry("embedder", entry_point_group="privaudit.embedders")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``"torchscript:/path/model.pt"`` into the registry name and its argument."""
    name, sep, arg = spec.partition(":")
    return name, (arg if sep else None)


def get_embedder(spec: str, *, device: str | torch.device = "cpu", options: object | None = None) -> Embedder:
    """Instantiate an embedder from its spec (``"pixels"``, ``"torchscript:PATH"``).

    Args:
        spec: the registered name, optionally followed by ``:ARG`` (the model path, for
            embedders whose options have a ``path``).
        device: where the model runs (``"cpu"`` or ``"cuda"``).
        options: an instance of the embedder's ``Options`` dataclass.
    """
    import dataclasses

    name, arg = parse_spec(spec)
    cls = EMBEDDERS.get(name)
    if cls.Options is None:
        if arg is not None or options is not None:
            raise ConfigError(f"embedder {name!r} takes no options; got {spec!r}")
        return cls(device=device)
    opts = options if options is not None else cls.Options()
    if arg is not None:
        if "path" not in {f.name for f in dataclasses.fields(opts)}:
            raise ConfigError(f"embedder {name!r} takes no ':' argument; got {spec!r}")
        opts = dataclasses.replace(opts, path=arg)
    return cls(device=device, options=opts)  # type: ignore[call-arg]
