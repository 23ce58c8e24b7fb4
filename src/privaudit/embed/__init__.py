"""Embed stage: the embedder registry and the built-in embedders."""

from privaudit.embed import pixels as _pixels  # noqa: F401  (registers "pixels")
from privaudit.embed.base import EMBEDDERS, Embedder, EmbedderInfo, Preprocessing, get_embedder

__all__ = ["EMBEDDERS", "Embedder", "EmbedderInfo", "Preprocessing", "get_embedder"]
