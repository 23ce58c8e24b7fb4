"""``pixels``: downsampled, centred, L2-normalised pixels.

The cosine similarity of two ``pixels`` embeddings is the Pearson correlation of the two images
after resizing to 32 x 32: it ignores brightness offsets and contrast scaling, and it finds exact
and lightly processed copies (noise, blur, gamma, re-encoding). It does not see through flips,
crops, rotations or shifts of more than a pixel or two: that is the job of the learned embedders.
"""

from __future__ import annotations

import torch

from privaudit.embed.base import EMBEDDERS, Embedder, Preprocessing


@EMBEDDERS.register("pixels")
class PixelsEmbedder(Embedder):
    """Images resized to 32 x 32, flattened, centred per image and L2-normalised (1024-d)."""

    name = "pixels"
    version = "1"
    description = "32x32 pixels, centred and L2-normalised per image (cosine = Pearson correlation)"
    # Two different scans stay below 0.99 in this space on the phantoms and on the COVID-19
    # collection in ../shared/data (highest cross-patient pair 0.95, its re-encoded duplicates
    # 1.000); lossy re-encoding and mild noise stay above it.
    near_duplicate_similarity = 0.99
    preprocessing = Preprocessing(size=(32, 32), channels=1, mean=(0.0,), std=(1.0,))
    dim = 32 * 32
    # Resizing and centring cost less than shipping the pixels to a Ray cluster: measured with
    # benchmarks/cluster_scale.py, 64 px images went 15 to 27x slower through Ray Data on one worker
    # than in this process (two runs). So with --cluster, pixels still embeds here.
    offload = False

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        flat = batch.reshape(batch.shape[0], -1)
        return flat - flat.mean(dim=1, keepdim=True)
