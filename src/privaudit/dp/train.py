"""Training one reference generator, with DP-SGD (Opacus) or without (ε = inf).

DP-SGD (Abadi et al., CCS 2016) as Opacus implements it (Yousefpour et al. 2021): Poisson
sampling (each image joins each step's batch independently with probability ``q = 1 / steps
per epoch``), per-image gradient clipping to ``max_grad_norm``, Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm`` added to the summed clipped gradients. The noise
multiplier is chosen by ``PrivacyEngine.make_private_with_epsilon`` so that the accountant's ε
after ``epochs`` epochs is at most the target; the ε the accountant reports after training is
recorded next to the target.

ε = inf is *the same training* (same model, optimizer, learning rate, Poisson batches of the same
expected size, same loss scaling) without clipping and noise: the non-private baseline.

The unit of privacy is one training image (one row of the dataset). A patient with k scans is
protected at about kε (group privacy); :mod:`privaudit.dp.sweep` states it and offers training on
one scan per patient.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from privaudit.dp.generators import ReferenceGenerator, validate
from privaudit.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """How each generator of a sweep is trained (the same at every ε).

    Attributes:
        epochs: passes over the training set (with Poisson sampling, on average).
        batch_size: expected images per step; the sampling rate is ``batch_size / N``.
        learning_rate: Adam learning rate.
        max_grad_norm: per-image gradient clipping norm C (DP points only).
        accountant: Opacus accountant: ``"prv"`` (privacy random variables, Gopi et al. 2021;
            Opacus' default; the upper end of its error band is reported) or ``"rdp"``
            (Rényi DP, Mironov 2017; looser, a strict upper bound).
    """

    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    max_grad_norm: float = 1.0
    accountant: Literal["prv", "rdp"] = "prv"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1; got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1; got {self.batch_size}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ConfigError(f"learning_rate must be positive; got {self.learning_rate}")
        if not (self.max_grad_norm > 0 and math.isfinite(self.max_grad_norm)):
            raise ConfigError(f"max_grad_norm must be positive; got {self.max_grad_norm}")
        if self.accountant not in ("prv", "rdp"):
            raise ConfigError(f"accountant must be 'prv' or 'rdp'; got {self.accountant!r}")


@dataclass(frozen=True)
class TrainStats:
    """What one training run did, as recorded in the sweep's results.

    Attributes:
        target_epsilon: the ε asked for (``None`` for the non-private baseline).
        epsilon: the accountant's ε after training (``None`` for the baseline: no guarantee).
        delta: the δ of the guarantee.
        accountant: ``"prv"`` or ``"rdp"`` (``None`` for the baseline).
        noise_multiplier: σ / C chosen by Opacus (0 for the baseline).
        max_grad_norm: the clipping norm C (``None`` for the baseline: no clipping).
        sample_rate: Poisson sampling probability per step.
        steps: optimisation steps taken.
        epochs: epochs asked for.
        n_train: images the generator trained on.
        seconds: wall time of the training.
        loss_first: mean per-image loss over the first epoch.
        loss_last: mean per-image loss over the last epoch.
    """

    target_epsilon: float | None
    epsilon: float | None
    delta: float
    accountant: str | None
    noise_multiplier: float
    max_grad_norm: float | None
    sample_rate: float
    steps: int
    epochs: int
    n_train: int
    seconds: float
    loss_first: float
    loss_last: float


def seeded_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def train_generator(
    generator_cls: type[ReferenceGenerator],
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    n_classes: int,
    epsilon: float,
    delta: float,
    options: TrainOptions,
    generator_options: object,
    seed: int,
    device: str = "cpu",
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[torch.nn.Module, TrainStats]:
    """Train one generator on ``images`` (``(N, 1, H, W)`` float32 in [0, 1]).

    Args:
        epsilon: the target ε; ``math.inf`` trains without clipping or noise.
        delta: the target δ (recorded for the baseline too).
        progress: called after each epoch with ``(epoch, epochs, mean loss)``.

    Returns:
        The trained model (the plain module, in eval mode, on ``device``) and its
        :class:`TrainStats`.
    """
    n = int(images.shape[0])
    if n < 2:
        raise ConfigError(f"need at least 2 training images; got {n}")
    if not (epsilon > 0):
        raise ConfigError(f"epsilon must be positive (or inf); got {epsilon}")
    private = math.isfinite(epsilon)
    model = generator_cls.build(size=int(images.shape[-1]), n_classes=n_classes, options=generator_options, seed=seed).to(device)
    validate(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    y = labels if labels is not None else torch.zeros(n, dtype=torch.long)
    dataset = TensorDataset(images, y)
    batch = min(options.batch_size, n)
    # Steps per epoch fix the sampling rate (Opacus: q = 1 / len(data_loader)).
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, generator=seeded_generator(seed + 1))
    data_gen = seeded_generator(seed + 2)
    reparam = seeded_generator(seed + 3)
    noise_multiplier = 0.0
    engine = None
    if private:
        try:
            from opacus import PrivacyEngine
        except ImportError:
            raise MissingDependencyError("opacus", extra="dp", needed_for="DP-SGD training (dp-sweep)") from None
        with warnings.catch_warnings():
            # Opacus warns that secure_mode is off (a CSPRNG for the noise); the sweep is an
            # experiment to measure a trade-off, not a release, and it must be reproducible.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            # The accountants' numerical warnings (RDP's "optimal order is the largest alpha",
            # PRV's log(0) at the edge of its grid) concern the search, not the result, which
            # is recomputed and recorded after training.
            warnings.filterwarnings("ignore", module=r"opacus\.accountants")
            engine = PrivacyEngine(accountant=options.accountant)
            try:
                model, optimizer, loader = engine.make_private_with_epsilon(
                    module=model,
                    optimizer=optimizer,
                    data_loader=loader,
                    target_epsilon=float(epsilon),
                    target_delta=float(delta),
                    epochs=options.epochs,
                    max_grad_norm=options.max_grad_norm,
                    poisson_sampling=True,
                    noise_generator=seeded_generator(seed + 4, device),
                    # Opacus searches σ until ε lies within an *absolute* 0.01 below the target
                    # (2 % at ε = 0.5); a relative 0.5 % keeps every point within 1 % of its target.
                    epsilon_tolerance=0.005 * float(epsilon),
                )
            except ValueError as exc:  # "The privacy budget is too low."
                raise ConfigError(f"ε = {epsilon:g} at δ = {delta:g} cannot be reached with {options.epochs} epochs: {exc}") from None
        # The DPDataLoader draws its Poisson batches from the original loader's generator.
        noise_multiplier = float(optimizer.noise_multiplier)
        sample_rate = 1.0 / len(loader)
    else:
        from opacus.data_loader import DPDataLoader

        # The same Poisson batches as DP-SGD (same expected size), without clipping or noise.
        loader = DPDataLoader.from_data_loader(loader, generator=data_gen)
        sample_rate = 1.0 / len(loader)
    expected = n * sample_rate
    model.train()
    start = time.perf_counter()
    epoch_losses: list[float] = []
    steps = 0
    for epoch in range(options.epochs):
        total, count = 0.0, 0
        for xb, yb in loader:
            xb = xb.to(device)
            yb = yb.to(device) if labels is not None else None
            optimizer.zero_grad(set_to_none=True)
            losses = generator_cls.per_sample_loss(model, xb, yb, reparam)
            if xb.shape[0] == 0:
                # An empty Poisson batch is still a step: with DP the noise is added and the
                # accountant counts it (skipping it would reveal the empty batch). The backward
                # pass on the empty batch gives Opacus its (empty) per-sample gradients.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    losses.sum().backward()
                optimizer.step()
                steps += 1
                continue
            # Sum over the batch divided by the *expected* batch size: what Opacus does with
            # loss_reduction="mean", so the baseline's steps are scaled the same way.
            with warnings.catch_warnings():
                # Opacus' per-sample hooks fire on module outputs when the input needs no grad.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                (losses.sum() / expected if not private else losses.mean()).backward()
            optimizer.step()
            steps += 1
            total += float(losses.detach().sum())
            count += int(xb.shape[0])
        epoch_losses.append(total / max(1, count))
        if progress is not None:
            progress(epoch + 1, options.epochs, epoch_losses[-1])
        log.info("epoch %d/%d: loss %.2f (%.1f s)", epoch + 1, options.epochs, epoch_losses[-1], time.perf_counter() - start)
    seconds = time.perf_counter() - start
    achieved = None
    if engine is not None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"opacus\.accountants")
            achieved = float(engine.get_epsilon(delta))
    # Opacus' public way out of its wrapper: hooks and per-sample gradients removed, so the
    # plain module samples and scores like any other.
    plain = model.to_standard_module() if hasattr(model, "to_standard_module") else model
    plain.eval()
    stats = TrainStats(
        target_epsilon=float(epsilon) if private else None,
        epsilon=achieved,
        delta=float(delta),
        accountant=options.accountant if private else None,
        noise_multiplier=noise_multiplier,
        max_grad_norm=options.max_grad_norm if private else None,
        sample_rate=sample_rate,
        steps=steps,
        epochs=options.epochs,
        n_train=n,
        seconds=seconds,
        loss_first=epoch_losses[0],
        loss_last=epoch_losses[-1],
    )
    return plain, stats


def per_sample_scores(
    generator_cls: type[ReferenceGenerator],
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    seed: int,
    draws: int = 4,
    device: str = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """Each image's loss under ``model``, averaged over ``draws`` seeded latent draws, or at the
    latent mean with ``draws=0`` (the attack statistic of the one-run audit: members tend to
    have lower loss)."""
    out = np.zeros(int(images.shape[0]), dtype=np.float64)
    gen = seeded_generator(seed)
    model.eval()
    with torch.inference_mode():
        for start in range(0, images.shape[0], batch_size):
            xb = images[start : start + batch_size].to(device)
            yb = None if labels is None else labels[start : start + batch_size].to(device)
            if draws == 0:  # the deterministic score: the latent mean
                out[start : start + xb.shape[0]] = generator_cls.per_sample_loss(model, xb, yb, None).double().cpu().numpy()
                continue
            acc = torch.zeros(xb.shape[0], dtype=torch.float64)
            for _ in range(draws):
                acc += generator_cls.per_sample_loss(model, xb, yb, gen).double().cpu()
            out[start : start + xb.shape[0]] = (acc / draws).numpy()
    return out


def sample_images(
    generator_cls: type[ReferenceGenerator],
    model: torch.nn.Module,
    labels: torch.Tensor | None,
    n: int,
    *,
    seed: int,
    batch_size: int = 512,
) -> np.ndarray:
    """``n`` images ``(n, H, W)`` float32 in [0, 1] from ``model`` (labels: one per image, or None)."""
    gen = seeded_generator(seed)
    parts = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        lab = None if labels is None else labels[start : start + m]
        parts.append(generator_cls.sample(model, lab, m, gen).float().cpu()[:, 0].numpy())
    return np.clip(np.concatenate(parts), 0.0, 1.0).astype(np.float32)
