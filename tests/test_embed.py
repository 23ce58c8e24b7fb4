"""The embedder registry and the pixels embedder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from privaudit.embed import EMBEDDERS, Embedder, Preprocessing, get_embedder
from privaudit.errors import ConfigError
from privaudit.registry import Registry


def test_registry_rejects_malformed_and_duplicate_names():
    reg: Registry[object] = Registry("thing")
    reg.add("ok_name", object)
    for bad in ("", "Upper", "with-dash", "9lives", "a" * 40, None):
        with pytest.raises(ValueError, match="invalid thing name"):
            reg.add(bad, object)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        reg.add("ok_name", object)
    with pytest.raises(ConfigError, match=r"unknown thing 'ok_nam' \(did you mean 'ok_name'\?\)"):
        reg.get("ok_nam")


def test_unknown_embedder_suggests_a_name():
    with pytest.raises(ConfigError, match="did you mean 'pixels'"):
        get_embedder("pixel")
    assert "pixels" in EMBEDDERS.names()


def test_pixels_is_pearson_correlation_of_downsampled_images(study):
    emb = get_embedder("pixels")
    a, b = study.train.images[0], study.train.images[5]
    va, vb = emb.embed([a, b])
    np.testing.assert_allclose(np.linalg.norm([va, vb], axis=1), 1.0, atol=1e-5)
    # Same size as the declared input (32 px): the embedding is the centred image itself.
    expected = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    assert float(va @ vb) == pytest.approx(expected, abs=1e-5)


def test_pixels_ignores_brightness_and_contrast(study):
    emb = get_embedder("pixels")
    img = study.train.images[3]
    v = emb.embed([img, np.clip(0.5 * img + 0.2, 0, 1).astype(np.float32)])
    assert float(v[0] @ v[1]) == pytest.approx(1.0, abs=1e-5)


def test_embeddings_do_not_depend_on_batch_size_or_order(study):
    emb = get_embedder("pixels")
    images = list(study.train.images[:37])
    whole = emb.embed(images, batch_size=256)
    # Float32 sums in a different grouping differ in the last bits only; 1e-6 is ~10 ulp at 1.
    np.testing.assert_allclose(emb.embed(images, batch_size=5), whole, atol=1e-6)
    np.testing.assert_allclose(emb.embed(images[::-1], batch_size=7)[::-1], whole, atol=1e-6)


def test_mixed_sizes_are_resized_to_the_declared_input():
    emb = get_embedder("pixels")
    rng = np.random.default_rng(0)
    big = rng.random((64, 64)).astype(np.float32)
    small = torch.nn.functional.interpolate(torch.from_numpy(big)[None, None], size=(32, 32), mode="bilinear", antialias=True)[0, 0].numpy()
    v = emb.embed([big, np.ascontiguousarray(small), rng.random((20, 48)).astype(np.float32)])
    assert v.shape == (3, 1024)
    assert float(v[0] @ v[1]) == pytest.approx(1.0, abs=1e-5)


def test_fingerprint_is_stable_and_tracks_preprocessing():
    a, b = get_embedder("pixels"), get_embedder("pixels")
    assert a.fingerprint() == b.fingerprint()
    info = a.info()
    assert info.dim == 1024 and info.weights_sha256 is None and info.preprocessing.size == (32, 32)

    class Bigger(type(a)):  # same embedder, other input size
        preprocessing = Preprocessing(size=(16, 16))
        dim = 256

    assert Bigger().fingerprint() != a.fingerprint()


def test_a_model_with_the_wrong_output_shape_is_caught():
    class Broken(Embedder):
        name = "broken"
        preprocessing = Preprocessing(size=(8, 8))
        dim = 4

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            return batch.reshape(batch.shape[0], -1)  # 64 features, not 4

    with pytest.raises(RuntimeError, match=r"returned \(2, 64\); expected \(2, 4\)"):
        Broken().embed([np.zeros((8, 8), np.float32)] * 2)


def test_preprocessing_validates_and_repeats_channels():
    with pytest.raises(ValueError, match="one value per channel"):
        Preprocessing(size=(8, 8), channels=3)
    p = Preprocessing(size=(4, 4), channels=3, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    out = p.apply([np.ones((8, 8), np.float32)])
    assert out.shape == (1, 3, 4, 4)
    torch.testing.assert_close(out, torch.ones(1, 3, 4, 4))
