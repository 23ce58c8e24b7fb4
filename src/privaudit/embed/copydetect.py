"""``copydetect``: a copy-detection descriptor trained on the audit's own training images.

In the spirit of SSCD (Pizzi et al., "A self-supervised descriptor for image copy detection",
CVPR 2022) and of the contrastive detectors used to find copies made by medical diffusion models
(Dar et al., arXiv 2307.01148): a small network is trained so that two transformed versions of
one training image map close together and different images map apart (InfoNCE over the batch).
The transforms are those a copied image may have gone through (:mod:`privaudit.transforms`);
some families are deliberately left out of training (:data:`HELD_OUT`) so that the recall
benchmark can report how the descriptor generalises to transforms it never saw.

The network sees 32 x 32 images (``size``; 32 by default) standardised per image (zero mean, unit variance), which makes
it blind to brightness and contrast offsets by construction. Fitting uses at most
``max_images`` training images (a seeded subsample: patient-stratified when patient ids exist)
and a fixed number of optimisation steps, so its cost is bounded whatever the audit's size.
Fitted weights are cached under a key made of the training set's content hash, the options, the
seed and the version; a re-run does not retrain.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privaudit.data.imageset import ImageSet
from privaudit.embed.base import EMBEDDERS, Embedder, Preprocessing, resized, select
from privaudit import transforms

log = logging.getLogger(__name__)

SIZE = 32
#: Transform families used as training augmentations.
TRAINED = ("flip", "crop", "rotate", "gamma", "contrast", "blur", "noise")
#: Families never used in training, reported separately by the recall benchmark.
HELD_OUT = ("shift", "window", "jpeg")


@dataclass(frozen=True)
class CopyDetectOptions:
    """How the descriptor is fitted.

    Attributes:
        max_images: training images used for fitting (a seeded subsample above it).
        epochs: passes over the fitting images; the number of optimisation steps is
            ``epochs * n / batch_size``, clipped to [``min_steps``, ``max_steps``].
        min_steps: fewest optimisation steps (small training sets still need them).
        max_steps: most optimisation steps (bounds the fitting time).
        batch_size: images per step; the other images of the batch are the negatives.
        temperature: InfoNCE temperature.
        learning_rate: peak AdamW learning rate (cosine decay, short warm-up).
        width: channels of the first stage (doubled at each of the four stages).
        size: input side in pixels.
        crop_min: smallest crop (share of the side) among the training augmentations.
    """

    max_images: int = 5000
    epochs: float = 40.0
    min_steps: int = 200
    max_steps: int = 800
    batch_size: int = 128
    temperature: float = 0.1
    learning_rate: float = 3e-3
    width: int = 16
    size: int = 32
    crop_min: float = 0.7

    def steps_for(self, n_images: int) -> int:
        """Optimisation steps for a fitting set of ``n_images``."""
        batch = min(self.batch_size, n_images)
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * n_images / batch))))


class CopyNet(nn.Module):
    """A small CNN: four stride-2 stages of two 3x3 convolutions, BatchNorm, GeM pooling.

    BatchNorm rather than GroupNorm: twice as fast on a CPU here (measured), and this network
    is never trained with DP-SGD.
    """

    def __init__(self, width: int = 16, dim: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for stage in range(4):
            c_out = width * 2**stage
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
        self.trunk = nn.Sequential(*layers)
        self.gem_p = nn.Parameter(torch.tensor(3.0))
        self.proj = nn.Linear(c_in, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Per-image standardisation: brightness and contrast changes cannot matter.
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
        f = self.trunk((x - mean) / std).clamp_min(1e-6)
        pooled = f.pow(self.gem_p).mean(dim=(2, 3)).pow(1.0 / self.gem_p)  # GeM pooling (SSCD)
        return self.proj(pooled)


def _augment(image: np.ndarray, rng: np.random.Generator, *, crop_min: float = 0.7) -> np.ndarray:
    """A random composition of the trained families (each with its own probability).

    Geometric ranges are wider than the benchmark's families (crops down to ``crop_min`` of
    the side, rotations to 15 degrees), so that the families sit inside what was trained.
    """
    out = image
    if rng.random() < 0.5:
        out = transforms.flip(out, rng)
    if rng.random() < 0.7:
        out = transforms.crop(out, rng, low=crop_min, high=1.0)
    if rng.random() < 0.3:
        out = transforms.rotate(out, rng, low=0.0, high=15.0)
    r = rng.random()
    if r < 0.35:
        out = transforms.gamma(out, rng)
    elif r < 0.7:
        out = transforms.contrast(out, rng)
    if rng.random() < 0.3:
        out = transforms.blur(out, rng)
    if rng.random() < 0.4:
        out = transforms.noise(out, rng)
    return out


def _subsample(train: ImageSet, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``n`` indices; with patient ids, round-robin over patients so all are represented."""
    if len(train) <= n:
        return np.arange(len(train))
    if train.patient_ids is None:
        return np.sort(rng.choice(len(train), size=n, replace=False))
    by_patient: dict[str, list[int]] = {}
    for i, p in enumerate(train.patient_ids):
        by_patient.setdefault(p, []).append(i)
    queues = [list(rng.permutation(v)) for v in by_patient.values()]
    order = rng.permutation(len(queues))
    picked: list[int] = []
    while len(picked) < n:
        for q in order:
            if queues[q] and len(picked) < n:
                picked.append(int(queues[q].pop()))
    return np.sort(np.array(picked))


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``a`` must pick row i of ``b`` among all rows of both views."""
    z = F.normalize(torch.cat([a, b]), dim=1)
    n = a.shape[0]
    sims = z @ z.T / temperature
    sims.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sims, targets)


def fit_copynet(
    images: np.ndarray,
    options: CopyDetectOptions,
    *,
    seed: int,
    augment_workers: int = 0,
) -> tuple[CopyNet, dict[str, float]]:
    """Train a :class:`CopyNet` on ``(N, size, size)`` float32 images; return it and fit statistics."""
    rng = np.random.default_rng(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # parameter initialisation draws from the global generator
        net = CopyNet(width=options.width)
    opt = torch.optim.AdamW(net.parameters(), lr=options.learning_rate, weight_decay=1e-4)
    n = images.shape[0]
    steps = options.steps_for(n)
    warmup = max(1, steps // 20)

    def lr_at(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    batch = min(options.batch_size, n)
    net.train()
    start = time.perf_counter()
    losses = []
    for step in range(steps):
        idx = rng.choice(n, size=batch, replace=False)
        v1 = np.stack([_augment(images[i], rng, crop_min=options.crop_min) for i in idx])[:, None]
        v2 = np.stack([_augment(images[i], rng, crop_min=options.crop_min) for i in idx])[:, None]
        loss = info_nce(net(torch.from_numpy(v1)), net(torch.from_numpy(v2)), options.temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % 100 == 0:
            log.info("copydetect: step %d/%d, loss %.3f, %.1f s", step + 1, steps, np.mean(losses[-100:]), time.perf_counter() - start)
    net.eval()
    stats = {
        "seconds": time.perf_counter() - start,
        "loss_first": float(np.mean(losses[: max(1, len(losses) // 10)])),
        "loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
        "images": float(n),
        "steps": float(steps),
    }
    return net, stats


@EMBEDDERS.register("copydetect")
class CopyDetectEmbedder(Embedder):
    """Self-supervised copy-detection descriptor (128-d), fitted on the audit's training images."""

    name = "copydetect"
    version = "1"
    description = (
        "self-supervised copy-detection descriptor (small CNN, 32 px by default) trained on this audit's training "
        "images to match copies under flips, crops, rotations, intensity changes, blur and noise"
    )
    requires_fit = True
    Options = CopyDetectOptions
    near_duplicate_similarity = 0.95
    preprocessing = Preprocessing(size=(SIZE, SIZE), channels=1)
    dim = 128

    def __init__(self, *, device: str | torch.device = "cpu", options: CopyDetectOptions | None = None) -> None:
        super().__init__(device=device)
        self.options = options or CopyDetectOptions()
        self.preprocessing = Preprocessing(size=(self.options.size, self.options.size), channels=1)
        self.net: CopyNet | None = None
        self._fit_key: str | None = None
        self.fit_stats: dict[str, float] = {}

    def fit_key(self) -> str | None:
        return self._fit_key

    def fit(self, train: ImageSet, *, seed: int, cache: object | None = None) -> None:
        key = hashlib.sha256(
            json.dumps(
                {"train": train.content_sha256, "options": asdict(self.options), "seed": seed, "version": self.version},
                sort_keys=True,
            ).encode()
        ).hexdigest()[:24]
        net = CopyNet(width=self.options.width)
        state = cache.load_model(self.name, key) if cache is not None else None  # type: ignore[attr-defined]
        if state is not None:
            try:
                net.load_state_dict(state, strict=True)
                log.info("copydetect: fitted weights from the cache (%s)", key)
            except RuntimeError:
                state = None
        if state is None:
            rng = np.random.default_rng(seed)
            idx = _subsample(train, self.options.max_images, rng)
            log.info("copydetect: fitting on %d training images (%d steps)", len(idx), self.options.steps_for(len(idx)))
            net, self.fit_stats = fit_copynet(resized(select(train.images, idx), self.options.size), self.options, seed=seed)
            if cache is not None:
                cache.save_model(self.name, key, net.state_dict())  # type: ignore[attr-defined]
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net = net.to(self.device)
        self._fit_key = key

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            raise RuntimeError("copydetect must be fitted on the training set before it embeds")
        return self.net(batch)
