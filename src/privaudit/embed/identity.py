"""``identity``: a patient-identity probe fitted on the training images' patient ids.

Packhäuser et al. (Scientific Reports 12:14851, 2022) showed that chest radiographs identify
their patient: a siamese ResNet-50 trained on ChestX-ray14 verified same-patient pairs with an
AUC of 0.994. privaudit's ``reid`` check needs such a probe, fitted on the audit's own training
patients, on a CPU, in seconds.

**What it is.** Frozen ImageNet features from the middle of EfficientNet-Lite0 (the output of
block ``block``, average-pooled to a ``grid`` x ``grid`` layout so that *where* a structure is
still counts), followed by a linear metric learned in closed form from the training patients:

1. PCA whitening on the training images (``dim`` components);
2. whitening by the *within-patient* covariance (shrunk towards the identity by ``shrinkage``),
   so that directions along which one patient's scans vary (pose, exposure, device) are damped
   and directions that separate patients are kept. This is the classic within-class covariance
   normalisation (WCCN; Hatch et al. 2006) / Fisher metric: a Mahalanobis metric learned from
   pairs of same-patient scans.

**Why not a siamese network trained by SGD**, as the paper did: an audit's training set often
has tens to hundreds of patients with several scans, and the probe must fit on two CPU cores.
Measured on the COVID-19 collection (67 training patients, held-out patients scored): a
supervised-contrastive head on the pooled features reached verification AUC 0.77 on held-out
patients (1.00 on its training patients: it memorised them), pooled penultimate features alone
0.72, the grid features 0.72, grid features with PCA whitening 0.86, and with the within-patient
whitening 0.91. The closed form has no optimisation noise, no learning rate and no epochs, and
it is deterministic for a training set.

**Without patient ids** (or with no patient holding two scans) there is no within-patient
covariance to learn: the probe is PCA whitening only, and :attr:`IdentityEmbedder.fit_note` says
so. The ``reid`` check refuses to run without training patient ids anyway.

The fitted transform is cached under a key made of the training set's content hash, its patient
ids, the options and the version.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from privaudit.data.imageset import ImageSet
from privaudit.embed.base import EMBEDDERS, Embedder, Preprocessing, select
from privaudit.embed.imagenet import LITE_MEAN, LITE_STD, WEIGHTS_SHA256, load_pretrained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IdentityOptions:
    """How the identity probe is built and fitted.

    Attributes:
        size: input side in pixels (images are resized to ``size`` x ``size``).
        block: the EfficientNet-Lite0 block whose output is used (0-15; mid-level blocks carry
            anatomy, the last ones ImageNet categories).
        grid: the feature map is average-pooled to ``grid`` x ``grid`` cells.
        dim: PCA components kept (at most the number of training images minus one).
        shrinkage: weight of the identity matrix in the within-patient covariance, in [0, 1].
        max_images: training images used for fitting (a seeded, patient-stratified subsample
            above it).
    """

    size: int = 224
    block: int = 5
    grid: int = 4
    dim: int = 64
    shrinkage: float = 0.1
    max_images: int = 20000

    def __post_init__(self) -> None:
        from privaudit.errors import ConfigError

        if not 32 <= self.size <= 1024:
            raise ConfigError(f"identity.size must lie in [32, 1024]; got {self.size}")
        if not 0 <= self.block <= 15:
            raise ConfigError(f"identity.block must lie in [0, 15]; got {self.block}")
        if not 1 <= self.grid <= 8:
            raise ConfigError(f"identity.grid must lie in [1, 8]; got {self.grid}")
        if self.dim < 2:
            raise ConfigError(f"identity.dim must be at least 2; got {self.dim}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ConfigError(f"identity.shrinkage must lie in [0, 1]; got {self.shrinkage}")
        if self.max_images < 2:
            raise ConfigError(f"identity.max_images must be at least 2; got {self.max_images}")


class _Trunk(torch.nn.Module):
    """EfficientNet-Lite0 up to ``block``, average-pooled to a grid and flattened."""

    def __init__(self, block: int, grid: int) -> None:
        super().__init__()
        model = load_pretrained()
        self.stem, self.bn0 = model._conv_stem, model._bn0
        self.blocks = torch.nn.ModuleList(model._blocks[: block + 1])
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn0(self.stem(x)))
        for b in self.blocks:
            x = b(x)
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)


def fit_metric(features: np.ndarray, patient_ids: np.ndarray | None, *, dim: int, shrinkage: float) -> tuple[np.ndarray, np.ndarray, str | None]:
    """The closed-form identity metric: ``(mean, projection, note)``.

    ``embedding = (x - mean) @ projection``. The projection is PCA whitening to ``dim``
    components followed by the inverse square root of the (shrunk) within-patient covariance.
    ``note`` says why the second step was skipped (no patient ids, no patient with two scans).
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    mean = x.mean(axis=0)
    centred = x - mean
    k = int(max(1, min(dim, n - 1, x.shape[1])))
    # PCA by SVD (deterministic up to sign, which does not change distances).
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    scale = s[:k] / np.sqrt(max(n - 1, 1))
    scale = np.where(scale > 1e-8 * max(scale.max(), 1e-12), scale, np.inf)
    pca = vt[:k].T / scale  # (d, k): whitened coordinates
    note = None
    if patient_ids is None:
        return mean, pca, "no patient ids: PCA whitening only (no within-patient metric)"
    z = centred @ pca
    within = np.zeros((k, k))
    dof = 0
    for p in np.unique(patient_ids):
        rows = z[patient_ids == p]
        if len(rows) > 1:
            c = rows - rows.mean(axis=0)
            within += c.T @ c
            dof += len(rows) - 1
    if dof == 0:
        return mean, pca, "no training patient has two scans: PCA whitening only (no within-patient metric)"
    within /= dof
    shrunk = (1.0 - shrinkage) * within + shrinkage * np.eye(k)
    evals, evecs = np.linalg.eigh(shrunk)
    inv_sqrt = evecs @ np.diag(1.0 / np.sqrt(np.clip(evals, 1e-8, None))) @ evecs.T
    return mean, pca @ inv_sqrt, note


@EMBEDDERS.register("identity")
class IdentityEmbedder(Embedder):
    """Patient-identity probe: frozen ImageNet grid features + a within-patient metric fitted on
    the training patients (see the module docstring)."""

    name = "identity"
    version = "1"
    description = (
        "patient-identity probe: EfficientNet-Lite0 (ImageNet) mid-level grid features with a linear metric "
        "fitted in closed form on this audit's training patients (PCA and within-patient whitening)"
    )
    requires_fit = True
    Options = IdentityOptions
    near_duplicate_similarity = 0.99
    max_batch = 32  # bounds activation memory (see Embedder.max_batch)

    def __init__(self, *, device: str | torch.device = "cpu", options: IdentityOptions | None = None) -> None:
        super().__init__(device=device)
        self.options = options or IdentityOptions()
        o = self.options
        self.preprocessing = Preprocessing(size=(o.size, o.size), channels=3, mean=(LITE_MEAN,) * 3, std=(LITE_STD,) * 3)
        self.trunk = _Trunk(o.block, o.grid).to(self.device).eval()
        for p in self.trunk.parameters():
            p.requires_grad_(False)
        self.dim = int(o.dim)
        self.mean: torch.Tensor | None = None
        self.projection: torch.Tensor | None = None
        self._fit_key: str | None = None
        #: Why the within-patient metric was not learned (``None`` when it was).
        self.fit_note: str | None = None

    def weights_sha256(self) -> str | None:
        return WEIGHTS_SHA256

    def fit_key(self) -> str | None:
        return self._fit_key

    def trunk_features(self, images: Sequence[np.ndarray], *, batch_size: int = 64) -> np.ndarray:
        """The frozen grid features of working-format images (before the fitted metric)."""
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = self.preprocessing.apply(images[start : start + batch_size]).to(self.device)
                out.append(self.trunk(batch).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def fit(self, train: ImageSet, *, seed: int, cache: object | None = None) -> None:
        pids = None if train.patient_ids is None else tuple(train.patient_ids)
        key = hashlib.sha256(
            json.dumps(
                {
                    "train": train.content_sha256,
                    "patients": hashlib.sha256("\0".join(pids).encode()).hexdigest() if pids else None,
                    "options": asdict(self.options),
                    "seed": seed,
                    "version": self.version,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:24]
        state = cache.load_model(self.name, key) if cache is not None else None  # type: ignore[attr-defined]
        if state is not None and {"mean", "projection", "note"} <= set(state):
            mean, proj = state["mean"], state["projection"]
            note = bytes(state["note"].tolist()).decode() or None
            log.info("identity: fitted metric from the cache (%s)", key)
        else:
            rng = np.random.default_rng(seed)
            idx = _subsample(pids, len(train), self.options.max_images, rng)
            log.info("identity: fitting the probe on %d training images", len(idx))
            feats = self.trunk_features(select(train.images, idx))  # read a batch at a time
            mean_np, proj_np, note = fit_metric(
                feats, None if pids is None else np.asarray(pids)[idx], dim=self.options.dim, shrinkage=self.options.shrinkage
            )
            mean = torch.from_numpy(mean_np.astype(np.float32))
            proj = torch.from_numpy(proj_np.astype(np.float32))
            if cache is not None:
                cache.save_model(self.name, key, {"mean": mean, "projection": proj, "note": torch.tensor(list((note or "").encode()), dtype=torch.uint8)})  # type: ignore[attr-defined]
        # Fewer training images than dim: pad the projection with zero columns so that the
        # declared dimension holds (the padding adds nothing to any distance).
        if proj.shape[1] < self.dim:
            proj = torch.cat([proj, torch.zeros(proj.shape[0], self.dim - proj.shape[1])], dim=1)
        self.mean, self.projection = mean.to(self.device), proj.to(self.device)
        self.fit_note = note
        self._fit_key = key

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.projection is None or self.mean is None:
            raise RuntimeError("identity must be fitted on the training set before it embeds")
        return (self.trunk(batch) - self.mean) @ self.projection


def _subsample(pids: tuple[str, ...] | None, n: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Up to ``limit`` indices; with patient ids, whole patients (so within-patient pairs stay)."""
    if n <= limit:
        return np.arange(n)
    if pids is None:
        return np.sort(rng.choice(n, size=limit, replace=False))
    by: dict[str, list[int]] = {}
    for i, p in enumerate(pids):
        by.setdefault(p, []).append(i)
    picked: list[int] = []
    for p in rng.permutation(sorted(by)):
        if len(picked) + len(by[p]) > limit:
            continue
        picked.extend(by[p])
    return np.sort(np.array(picked))
