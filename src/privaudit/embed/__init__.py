"""Embed stage: the embedder registry, the built-in embedders and the embedding cache.

Built-ins: ``pixels`` (downsampled pixels), ``imagenet`` (EfficientNet-Lite0 with ImageNet
weights), ``copydetect`` (a copy-detection descriptor fitted on the audit's training images),
``identity`` (a patient-identity probe fitted on the training patients, for ``reid``).
Third-party embedders register through the entry-point group ``privaudit.embedders``.
"""

from privaudit.embed import copydetect as _copydetect  # noqa: F401  (registers "copydetect")
from privaudit.embed import identity as _identity  # noqa: F401  (registers "identity")
from privaudit.embed import imagenet as _imagenet  # noqa: F401  (registers "imagenet")
from privaudit.embed import pixels as _pixels  # noqa: F401  (registers "pixels")
from privaudit.embed import torchscript as _torchscript  # noqa: F401  (registers "torchscript")
from privaudit.embed.base import EMBEDDERS, Embedder, EmbedderInfo, Preprocessing, get_embedder, parse_spec
from privaudit.embed.cache import EmbeddingCache, default_cache_dir

__all__ = ["EMBEDDERS", "Embedder", "EmbedderInfo", "EmbeddingCache", "Preprocessing", "default_cache_dir", "get_embedder", "parse_spec"]
