"""``torchscript:PATH``: bring your own model.

``--embedder torchscript:/models/xray-embedder.pt`` loads a TorchScript model with
``torch.jit.load(path, map_location=...)`` and uses its output as the embedding. The model must
map a float32 batch ``(N, C, H, W)`` to ``(N, D)`` float features. Its input is declared either in
a sidecar JSON next to the model (``/models/xray-embedder.pt.json`` or ``/models/xray-embedder.json``)
or in the configuration file's ``[embedder_options.torchscript]`` table (which wins)::

    {"input_size": [224, 224], "channels": 3, "mean": [0.485, 0.456, 0.406],
     "std": [0.229, 0.224, 0.225]}

``channels`` is 1 or 3 (grey repeated); ``mean`` and ``std`` apply to images in [0, 1].

**A TorchScript file is code**: loading it runs what its author wrote. privaudit loads a model
only from the path the user names, never from a download, and its SHA-256 is part of the
embedder's fingerprint (and so of the results and the cache key).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from privaudit.embed.base import EMBEDDERS, Embedder, Preprocessing
from privaudit.errors import ConfigError, InputError


@dataclass(frozen=True)
class TorchScriptOptions:
    """Declared input of a TorchScript embedder (each overrides the sidecar JSON's value).

    Attributes:
        path: the model file (normally given as ``torchscript:PATH``).
        input_size: ``[height, width]`` the model expects.
        channels: 1, or 3 to repeat grey.
        mean: per-channel mean for images in [0, 1].
        std: per-channel standard deviation.
    """

    path: str | None = None
    input_size: tuple[int, ...] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _sidecar(path: Path) -> dict:
    for candidate in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConfigError(f"torchscript sidecar {candidate} is not valid JSON ({exc})") from None
            if not isinstance(data, dict):
                raise ConfigError(f"torchscript sidecar {candidate} must hold a JSON object")
            unknown = set(data) - {"input_size", "channels", "mean", "std", "name", "description"}
            if unknown:
                raise ConfigError(f"torchscript sidecar {candidate}: unknown key(s) {', '.join(sorted(unknown))}")
            return data
    return {}


@EMBEDDERS.register("torchscript")
class TorchScriptEmbedder(Embedder):
    """A user's TorchScript model (see the module docstring)."""

    name = "torchscript"
    version = "1"
    description = "a user-supplied TorchScript model"
    Options = TorchScriptOptions
    # A user's model has no known near-duplicate level; 0.99 is conservative (few removals).
    near_duplicate_similarity = 0.99

    def __init__(self, *, device: str | torch.device = "cpu", options: TorchScriptOptions | None = None) -> None:
        super().__init__(device=device)
        options = options or TorchScriptOptions()
        if not options.path:
            raise ConfigError("the torchscript embedder needs a model path: --embedder torchscript:PATH")
        path = Path(options.path)
        if not path.is_file():
            raise InputError(f"torchscript model not found: {path}")
        side = _sidecar(path)
        size = options.input_size or side.get("input_size")
        channels = options.channels or side.get("channels")
        if size is None or channels is None:
            raise ConfigError(
                f"torchscript model {path}: declare its input ('input_size' and 'channels', optionally "
                f"'mean' and 'std') in {path.name}.json next to it or in [embedder_options.torchscript]"
            )
        mean = options.mean or side.get("mean") or [0.0] * int(channels)
        std = options.std or side.get("std") or [1.0] * int(channels)
        try:
            self.preprocessing = Preprocessing(
                size=(int(size[0]), int(size[1])), channels=int(channels), mean=tuple(map(float, mean)), std=tuple(map(float, std))
            )
        except (TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"torchscript model {path}: bad input declaration ({exc})") from None
        self.path = path
        self._sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            with warnings.catch_warnings():
                # torch 2.13 marks TorchScript deprecated in favour of torch.export; users still
                # ship TorchScript files, and the warning says nothing they can act on here.
                warnings.simplefilter("ignore", DeprecationWarning)
                self.model = torch.jit.load(str(path), map_location=self.device)
        except Exception as exc:  # not TorchScript, a plain pickle, a truncated file ...
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise InputError(f"{path} is not a loadable TorchScript model ({first})") from None
        self.model.eval()
        self.dim = self._probe_dim()
        if side.get("description"):
            self.description = str(side["description"])

    def _probe_dim(self) -> int:
        h, w = self.preprocessing.size
        with torch.inference_mode():
            try:
                out = self.model(torch.zeros(2, self.preprocessing.channels, h, w, device=self.device))
            except Exception as exc:
                first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
                raise InputError(f"torchscript model {self.path} fails on a (2, {self.preprocessing.channels}, {h}, {w}) input ({first})") from None
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2 or not out.is_floating_point():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"torchscript model {self.path} must return a float tensor of shape (N, D); got {shape}")
        return int(out.shape[1])

    def weights_sha256(self) -> str | None:
        return self._sha256

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.model(batch)
