"""The learned and bring-your-own embedders, and the embedding cache."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from conftest import realdata
from privaudit import transforms
from privaudit.config import AuditConfig
from privaudit.data import ImageSet
from privaudit.embed import EmbeddingCache, get_embedder
from privaudit.embed.copydetect import CopyDetectEmbedder, CopyDetectOptions
from privaudit.embed.imagenet import WEIGHTS_SHA256, load_pretrained, weights_path
from privaudit.errors import ConfigError, InputError
from privaudit.pipeline import audit
from privaudit.search import knn

# Fitting options for the tiny test profile: enough steps to learn the phantoms' 120 scans.
TEST_FIT = CopyDetectOptions(min_steps=150, max_steps=150, batch_size=64, size=32)


# ---------------------------------------------------------------- imagenet


def test_imagenet_weights_load_strictly_and_are_pinned():
    import hashlib

    assert hashlib.sha256(weights_path().read_bytes()).hexdigest() == WEIGHTS_SHA256
    model = load_pretrained()  # load_state_dict(strict=True) inside: every key matched
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    emb = get_embedder("imagenet")
    assert emb.dim == 1280 and emb.info().weights_sha256 == WEIGHTS_SHA256


def test_imagenet_refuses_other_weights(tmp_path, monkeypatch):
    import privaudit.embed.imagenet as mod

    fake = tmp_path / "weights.pth"
    torch.save(mod.EfficientNetLite0().state_dict() if hasattr(mod, "EfficientNetLite0") else load_pretrained().state_dict(), fake)
    monkeypatch.setattr(mod, "weights_path", lambda: fake)
    with pytest.raises(Exception, match="not the pinned"):
        mod.load_pretrained()


def test_imagenet_embeddings_do_not_depend_on_batch_size(study):
    emb = get_embedder("imagenet")
    images = list(study.train.images[:20])
    # Convolutions reorder float32 sums with the batch; 1e-5 is ~100 ulp of a unit vector entry.
    np.testing.assert_allclose(emb.embed(images, batch_size=3), emb.embed(images, batch_size=20), atol=1e-5)


@pytest.mark.slow
@pytest.mark.realdata
def test_imagenet_features_beat_pixels_on_a_linear_probe():
    """Pretrained features must carry more of the diagnosis than raw pixels do.

    PneumoniaMNIST, full training split (4,708) and test split (624), standardised features,
    L2 logistic regression with C = 0.01 (the value 5-fold cross-validation on the training
    split picks for both spaces). Measured: AUC 0.943 (imagenet) vs 0.930 (pixels).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = np.load(realdata("medmnist/pneumoniamnist.npz"))
    train = ImageSet.from_arrays(data["train_images"])
    test = ImageSet.from_arrays(data["test_images"])
    y_train, y_test = data["train_labels"][:, 0], data["test_labels"][:, 0]
    auc = {}
    for name in ("pixels", "imagenet"):
        emb = get_embedder(name)
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.01, max_iter=5000))
        clf.fit(emb.embed(train), y_train)
        auc[name] = roc_auc_score(y_test, clf.predict_proba(emb.embed(test))[:, 1])
    assert auc["imagenet"] > auc["pixels"] + 0.005, auc


# ---------------------------------------------------------------- copydetect


@pytest.fixture(scope="session")
def copydetect(study) -> CopyDetectEmbedder:
    emb = CopyDetectEmbedder(options=TEST_FIT)
    emb.fit(study.train, seed=0, cache=None)
    return emb


def test_copydetect_ranks_transformed_copies_first(study, copydetect):
    """A flipped, cropped, rotated or noisy copy of a training scan must find that scan among its
    nearest training images, where raw pixels mostly fail for the geometric ones.

    Measured at this profile (150 steps, seeds 7-9): top-5 hit 0.97-1.0 for every family; top-1
    0.83-0.97 for flip/rotate/noise but 0.40-0.50 for crop, whose top-1 is often a sibling scan
    of the same phantom patient. The margins below leave room for thread-order differences.
    """
    rng = np.random.default_rng(7)
    train_vectors = copydetect.embed(study.train)
    pixel_train = get_embedder("pixels").embed(study.train)
    picks = rng.choice(len(study.train), size=30, replace=False)
    for family in ("flip", "crop", "rotate", "noise"):
        queries = [transforms.apply(family, study.train.images[i], rng) for i in picks]
        nearest = knn(copydetect.embed(queries), train_vectors, k=5).indices
        top5 = float((nearest == picks[:, None]).any(axis=1).mean())
        top1 = float((nearest[:, 0] == picks).mean())
        pixel_top1 = float((knn(get_embedder("pixels").embed(queries), pixel_train, k=1).indices[:, 0] == picks).mean())
        assert top5 >= 0.9, (family, top5)
        assert top1 >= (0.7 if family != "crop" else pixel_top1 + 0.1), (family, top1, pixel_top1)
    flips = [transforms.flip(study.train.images[i], rng) for i in picks]
    pixel_flip_hit = float((knn(get_embedder("pixels").embed(flips), pixel_train, k=1).indices[:, 0] == picks).mean())
    assert pixel_flip_hit < 0.5  # the learned space sees what pixels cannot


def test_copydetect_fit_is_seeded_cached_and_fingerprinted(study, tmp_path):
    cache = EmbeddingCache(tmp_path)
    a = CopyDetectEmbedder(options=TEST_FIT)
    with pytest.raises(RuntimeError, match="fitted"):
        a.fingerprint()
    a.fit(study.train, seed=0, cache=cache)
    assert a.fit_stats["steps"] == 150 and a.fit_stats["loss_last"] < a.fit_stats["loss_first"]
    saved = list((tmp_path / "models").iterdir())
    assert len(saved) == 1 and stat.S_IMODE(saved[0].stat().st_mode) == 0o600
    b = CopyDetectEmbedder(options=TEST_FIT)
    b.fit(study.train, seed=0, cache=cache)
    assert b.fit_stats == {}  # came from the cache, nothing trained
    assert a.fingerprint() == b.fingerprint()
    x = list(study.holdout.images[:10])
    np.testing.assert_array_equal(a.embed(x), b.embed(x))
    c = CopyDetectEmbedder(options=TEST_FIT)
    c.fit(study.train.subset(range(100)), seed=0, cache=cache)
    assert c.fingerprint() != a.fingerprint()  # another training set, another space


def test_copydetect_in_an_audit_finds_flipped_copies(study, tmp_path):
    rng = np.random.default_rng(3)
    picks = rng.choice(len(study.train), size=20, replace=False)
    flipped = ImageSet(
        images=tuple(transforms.flip(study.train.images[i], rng) for i in picks) + study.clean.images[:80],
        ids=tuple(f"flip_{k}" for k in range(20)) + study.clean.ids[:80],
        source="flipped copies + clean",
    )
    # The descriptor alone (the aligned comparison, which undoes mirrors too, is left out).
    cfg = AuditConfig.from_dict({"embedders": ["copydetect"], "copies": {"align": False},
                                 "embedder_options": {"copydetect": {"min_steps": 150, "max_steps": 150, "batch_size": 64, "size": 32}}})
    result = audit(study.train, flipped, study.holdout, config=cfg, cache=tmp_path)
    flagged = {f.synthetic_id for f in result.checks["copies"].flagged}
    assert len({f"flip_{k}" for k in range(20)} & flagged) >= 16
    assert result.to_dict()["embedders"][0]["name"] == "copydetect"
    pixels = audit(study.train, flipped, study.holdout, config=AuditConfig.from_dict({"embedders": ["pixels"], "copies": {"align": False}}), cache=False).checks["copies"]
    assert len({f"flip_{k}" for k in range(20)} & {f.synthetic_id for f in pixels.flagged}) <= 4


# ---------------------------------------------------------------- torchscript


class _Tiny(torch.nn.Module):
    def __init__(self, out: int = 8, bad: str = "") -> None:
        super().__init__()
        self.proj = torch.nn.Linear(16 * 16, out)
        self.bad = bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.proj(x.mean(dim=1).flatten(1))
        if self.bad == "3d":
            return y[:, :, None]
        if self.bad == "int":
            return y.long()
        return y


def _script(tmp_path, bad: str = "", sidecar: dict | None = None):
    torch.manual_seed(0)
    path = tmp_path / f"model{bad}.pt"
    torch.jit.script(_Tiny(bad=bad)).save(str(path))
    if sidecar is not None:
        (tmp_path / f"model{bad}.pt.json").write_text(json.dumps(sidecar))
    return path


SIDECAR = {"input_size": [16, 16], "channels": 3, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_torchscript_happy_path(tmp_path, study):
    path = _script(tmp_path, sidecar=SIDECAR)
    emb = get_embedder(f"torchscript:{path}")
    assert emb.dim == 8 and emb.preprocessing.size == (16, 16) and emb.preprocessing.channels == 3
    v = emb.embed(study.train.images[:5], batch_size=2)
    assert v.shape == (5, 8) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(v, emb.embed(study.train.images[:5], batch_size=5), atol=1e-6)
    import hashlib

    assert emb.weights_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    cfg = AuditConfig(embedders=(f"torchscript:{path}",))
    result = audit(study.train, study.leaky, study.holdout, config=cfg, cache=False)
    assert result.checks["copies"].embedders == (f"torchscript:{path}",)


def test_torchscript_options_override_the_sidecar(tmp_path):
    path = _script(tmp_path, sidecar=SIDECAR)
    cfg = AuditConfig.from_dict({"embedder_options": {"torchscript": {"channels": 1, "mean": [0.0], "std": [1.0]}}})
    emb = get_embedder(f"torchscript:{path}", options=cfg.embedder_options_for("torchscript"))
    assert emb.preprocessing.channels == 1


@pytest.mark.parametrize(
    "make, error, message",
    [
        (lambda p: _script(p, sidecar=None), ConfigError, "declare its input"),
        (lambda p: _script(p, bad="3d", sidecar=SIDECAR), InputError, r"must return a float tensor of shape \(N, D\); got \(2, 8, 1\)"),
        (lambda p: _script(p, bad="int", sidecar=SIDECAR), InputError, "must return a float tensor"),
        (lambda p: _pickled(p), InputError, "is not a loadable TorchScript model"),
        (lambda p: _text(p), InputError, "is not a loadable TorchScript model"),
        (lambda p: p / "missing.pt", InputError, "torchscript model not found"),
        (lambda p: _bad_sidecar(p), ConfigError, "sidecar .* is not valid JSON"),
    ],
    ids=["no-declaration", "3d-output", "int-output", "plain-pickle", "text-file", "missing", "bad-sidecar"],
)
def test_torchscript_bad_models(tmp_path, make, error, message):
    path = make(tmp_path)
    with pytest.raises(error, match=message):
        get_embedder(f"torchscript:{path}")


def _pickled(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(3)}, path)
    (tmp_path / "state.pt.json").write_text(json.dumps(SIDECAR))
    return path


def _text(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("not a model")
    (tmp_path / "model.pt.json").write_text(json.dumps(SIDECAR))
    return path


def _bad_sidecar(tmp_path):
    path = _script(tmp_path)
    (tmp_path / "model.pt.json").write_text("{input_size: [")
    return path


def test_torchscript_needs_a_path():
    with pytest.raises(ConfigError, match="needs a model path"):
        get_embedder("torchscript")
    with pytest.raises(ConfigError, match="takes no options"):
        get_embedder("pixels:whatever")


# ---------------------------------------------------------------- the cache

# The cache tests count pixel embeddings; a pixels-only audit keeps them free of model fits.
PIXELS = AuditConfig(embedders=("pixels",))


def test_second_audit_embeds_nothing(study, tmp_path):
    first = audit(study.train, study.leaky, study.holdout, config=PIXELS, cache=tmp_path)
    n = len(study.train) + len(study.leaky) + len(study.holdout)
    unique = len(set(study.train.pixel_digests) | set(study.leaky.pixel_digests) | set(study.holdout.pixel_digests))
    # The leaky set's exact copies are the training images' pixels: embedded once, then reused.
    assert first.run.embedded["pixels"].embedded == unique < n
    assert first.run.embedded["pixels"].from_cache == n - unique
    second = audit(study.train, study.clean, study.holdout, config=PIXELS, cache=tmp_path)
    # Training and holdout come from the cache; only the new synthetic set is embedded.
    assert second.run.embedded["pixels"].from_cache == len(study.train) + len(study.holdout)
    assert second.run.embedded["pixels"].embedded == len(study.clean)
    third = audit(study.train, study.leaky, study.holdout, config=PIXELS, cache=tmp_path)
    assert third.run.embedded["pixels"].embedded == 0
    assert third.checks == first.checks  # cached vectors give the same figures


def test_cache_is_private(study, tmp_path):
    root = tmp_path / "c"
    audit(study.train, study.leaky, study.holdout, config=PIXELS, cache=root)
    for p in [root, *root.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o700 if p.is_dir() else 0o600), (p, oct(mode))


def test_corrupt_cache_files_are_ignored_and_rewritten(study, tmp_path):
    audit(study.train, study.leaky, study.holdout, config=PIXELS, cache=tmp_path)
    shards = sorted((tmp_path / "embeddings").rglob("*.npz"))
    shards[0].write_bytes(b"garbage")
    shards[1].write_bytes(shards[1].read_bytes()[:100])  # truncated
    again = audit(study.train, study.leaky, study.holdout, config=PIXELS, cache=tmp_path)
    assert again.run.embedded["pixels"].embedded > 0
    for shard in shards[:2]:
        with np.load(shard, allow_pickle=False) as data:  # rewritten whole
            assert data["vectors"].dtype == np.float32


def test_a_tampered_vector_is_not_trusted(tmp_path):
    cache = EmbeddingCache(tmp_path)
    cache.store("fp", [b"a" * 32], np.full((1, 4), np.nan, dtype=np.float32))
    vectors, found = cache.lookup("fp", [b"a" * 32], 4)
    assert not found.any()


def test_no_cache_stores_nothing_and_purge_empties(study, tmp_path, private_cache_dir):
    result = audit(study.train, study.leaky, study.holdout, config=PIXELS, cache=False)
    assert result.run.cache_dir is None and result.run.embedded == {}
    cache = EmbeddingCache(tmp_path)
    audit(study.train, study.leaky, study.holdout, config=PIXELS, cache=cache)
    (tmp_path / "keep.txt").write_text("mine")
    files, size = cache.purge()
    assert files > 0 and size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_default_cache_dir_honours_the_environment(private_cache_dir):
    from privaudit.embed import default_cache_dir

    assert default_cache_dir() == private_cache_dir == __import__("pathlib").Path(os.environ["PRIVAUDIT_CACHE_DIR"])


def test_default_cache_dir_without_the_environment_is_the_users_cache(monkeypatch):
    """Without PRIVAUDIT_CACHE_DIR the cache goes to the per-user cache folder (platformdirs,
    a declared dependency: the demo crashed on a fresh install when it was not)."""
    import platformdirs

    from privaudit.embed import default_cache_dir

    monkeypatch.delenv("PRIVAUDIT_CACHE_DIR")
    assert default_cache_dir() == __import__("pathlib").Path(platformdirs.user_cache_dir("privaudit", appauthor=False))
