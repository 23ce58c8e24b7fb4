"""Reference generators that ``privaudit dp-sweep`` trains with and without DP-SGD.

A generator is registered by name (like an embedder or a check) and has one interface:

* ``build(size, n_classes, options, seed)`` (a class method) returns an untrained
  ``torch.nn.Module`` made of layers Opacus can compute per-sample gradients for;
* ``per_sample_loss(model, x, y, generator)`` returns one loss per image (the objective DP-SGD
  clips per image, and the score of the one-run audit's attack);
* ``sample(model, labels, generator)`` draws images in [0, 1].

Third-party generators arrive through the entry-point group ``privaudit.generators``.

The built-in ``vae`` is a small label-conditional convolutional VAE (Kingma & Welling 2014;
conditional as in Sohn et al. 2015). It uses GroupNorm, never BatchNorm: BatchNorm mixes the
images of a batch, so one image's gradient depends on the others and per-image clipping bounds
nothing (Opacus' ``ModuleValidator`` refuses it). :func:`validate` runs that validator on every
generator before training.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from privaudit.errors import ConfigError, MissingDependencyError
from privaudit.registry import Registry


@dataclass(frozen=True)
class VAEOptions:
    """Shape of the ``vae`` generator.

    Attributes:
        width: channels of the first convolution stage (doubled at each of the three stages).
        latent_dim: size of the latent code.
        groups: GroupNorm groups per normalisation layer.
    """

    width: int = 16
    latent_dim: int = 32
    groups: int = 8

    def __post_init__(self) -> None:
        if self.width < 1 or self.latent_dim < 1 or self.groups < 1:
            raise ConfigError(f"vae options must be positive; got {self}")
        if self.width % self.groups:
            raise ConfigError(f"vae width ({self.width}) must be a multiple of groups ({self.groups})")


class ReferenceGenerator(ABC):
    """The interface of a registered generator (see the module docstring)."""

    name: ClassVar[str]
    description: ClassVar[str] = ""
    Options: ClassVar[type]

    @classmethod
    @abstractmethod
    def build(cls, *, size: int, n_classes: int, options: object, seed: int) -> nn.Module:
        """An untrained model for ``size`` x ``size`` images and ``n_classes`` labels (0: none)."""

    @staticmethod
    @abstractmethod
    def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        """One loss per image of ``x`` (``(B, 1, H, W)`` in [0, 1]); lower is a better fit."""

    @staticmethod
    @abstractmethod
    def sample(model: nn.Module, labels: torch.Tensor | None, n: int, generator: torch.Generator) -> torch.Tensor:
        """``(n, 1, H, W)`` images in [0, 1], conditioned on ``labels`` when given."""


GENERATORS: Registry[type[ReferenceGenerator]] = Registry("generator", entry_point_group="privaudit.generators")


def _block(c_in: int, c_out: int, groups: int, *, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.GroupNorm(min(groups, c_out), c_out), nn.SiLU()]


class ConditionalVAE(nn.Module):
    """Three stride-2 convolution stages down to 4 x 4 (for 32 px), a Gaussian latent, and the
    mirror image up with nearest-neighbour upsampling + convolution (no transposed convolutions:
    they give checkerboard artefacts, and Opacus' per-sample hooks do not cover them)."""

    def __init__(self, *, size: int, n_classes: int, width: int, latent_dim: int, groups: int) -> None:
        super().__init__()
        if size % 8 or size < 8:
            raise ConfigError(f"the vae generator needs an image side divisible by 8; got {size}")
        self.size = size
        self.n_classes = n_classes
        self.latent_dim = latent_dim
        self.base = size // 8
        c = width
        self.encoder = nn.Sequential(
            *_block(1, c, groups, stride=2), *_block(c, 2 * c, groups, stride=2), *_block(2 * c, 4 * c, groups, stride=2),
        )
        flat = 4 * c * self.base * self.base
        self.to_latent = nn.Linear(flat + n_classes, 2 * latent_dim)
        self.from_latent = nn.Linear(latent_dim + n_classes, flat)
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), *_block(4 * c, 2 * c, groups),
            nn.Upsample(scale_factor=2, mode="nearest"), *_block(2 * c, c, groups),
            nn.Upsample(scale_factor=2, mode="nearest"), *_block(c, c, groups),
            nn.Conv2d(c, 1, 3, padding=1),
        )
        self._width = width

    def _onehot(self, y: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
        if self.n_classes == 0:
            return torch.zeros(n, 0, device=device)
        assert y is not None
        return F.one_hot(y.long(), self.n_classes).float()

    def encode(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x * 2 - 1).flatten(1)
        stats = self.to_latent(torch.cat([h, self._onehot(y, x.shape[0], x.device)], dim=1))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-10, 10)

    def decode_logits(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = self.from_latent(torch.cat([z, self._onehot(y, z.shape[0], z.device)], dim=1))
        h = F.silu(h).view(z.shape[0], 4 * self._width, self.base, self.base)
        return self.decoder(h)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, eps: torch.Tensor | None = None) -> torch.Tensor:
        """Per-image negative ELBO (in nats): Bernoulli reconstruction + KL to N(0, I).

        ``eps`` is the reparameterisation noise (drawn by the caller from a seeded generator, so
        that training is reproducible); ``None`` uses the latent mean (a deterministic score).
        """
        mu, logvar = self.encode(x, y)
        z = mu if eps is None else mu + eps * torch.exp(0.5 * logvar)
        logits = self.decode_logits(z, y)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return rec + kl


@GENERATORS.register("vae")
class VAEGenerator(ReferenceGenerator):
    """Label-conditional convolutional VAE with GroupNorm (see :class:`ConditionalVAE`)."""

    name = "vae"
    description = "label-conditional convolutional VAE, GroupNorm, Bernoulli decoder (DP-SGD compatible)"
    Options = VAEOptions

    @classmethod
    def build(cls, *, size: int, n_classes: int, options: object, seed: int) -> nn.Module:
        opts = options if isinstance(options, VAEOptions) else VAEOptions()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # parameter initialisation draws from the global generator
            return ConditionalVAE(size=size, n_classes=n_classes, width=opts.width, latent_dim=opts.latent_dim, groups=opts.groups)

    @staticmethod
    def per_sample_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator | None) -> torch.Tensor:
        inner = _unwrap(model)
        eps = None
        if generator is not None:
            eps = torch.randn(x.shape[0], inner.latent_dim, generator=generator, device=generator.device).to(x.device)
        return model(x, y, eps)

    @staticmethod
    def sample(model: nn.Module, labels: torch.Tensor | None, n: int, generator: torch.Generator) -> torch.Tensor:
        inner = _unwrap(model)
        device = next(inner.parameters()).device
        z = torch.randn(n, inner.latent_dim, generator=generator, device=generator.device).to(device)
        with torch.inference_mode():
            return torch.sigmoid(inner.decode_logits(z, None if labels is None else labels.to(device)))


def _unwrap(model: nn.Module) -> nn.Module:
    """The user module inside an Opacus ``GradSampleModule`` (or the module itself)."""
    return getattr(model, "_module", model)


def validate(model: nn.Module) -> None:
    """Refuse a model with layers DP-SGD cannot train (Opacus ``ModuleValidator``), naming them."""
    try:
        from opacus.validators import ModuleValidator
    except ImportError:
        raise MissingDependencyError("opacus", extra="dp", needed_for="DP-SGD training") from None
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError("the generator is not DP-SGD compatible: " + "; ".join(str(e) for e in errors[:3]))


def n_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return int(sum(p.numel() for p in _unwrap(model).parameters() if p.requires_grad))


__all__ = ["GENERATORS", "ReferenceGenerator", "VAEGenerator", "VAEOptions", "ConditionalVAE", "validate", "n_parameters"]
