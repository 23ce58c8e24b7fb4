"""Large inputs read from disk on access (privaudit.data.lazy): the same pixels, digests, ids,
embeddings and audit results as when they are held in memory, and a clear error when an input
changes while an audit runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import write_png
from privaudit.cli import main
from privaudit.config import AuditConfig
from privaudit.data import load_imageset
from privaudit.data.lazy import ENV_PIXEL_BUDGET, READ_CHUNK, ArrayImages, FileImages, LazyImages, NpyImages, pixel_budget_bytes
from privaudit.embed import get_embedder
from privaudit.embed.cache import EmbeddingCache
from privaudit.errors import InputError
from privaudit.pipeline import audit

EAGER, LAZY = float("inf"), 0.0


@pytest.fixture(scope="module")
def inputs(study, study_files, tmp_path_factory) -> dict[str, Path]:
    """The tiny study's training set as a folder of PNGs, a manifest, an .npy and an .npz.

    The arrays are stored as 12-bit values in uint16, so that the conversion to the working
    format on access (scaled by each image's own range) is exercised.
    """
    root = tmp_path_factory.mktemp("lazy")
    arr = np.stack([np.rint(img * 4095).astype(np.uint16) for img in study.train.images])
    np.save(root / "train.npy", arr)
    np.savez(root / "train.npz", images=arr, patient_id=np.array(study.train.patient_ids))
    return {
        "folder": study_files["train"].parent / "train",
        "manifest": study_files["train"],
        "npy": root / "train.npy",
        "npz": root / "train.npz",
    }


LAZY_TYPES = {"folder": FileImages, "manifest": FileImages, "npy": NpyImages, "npz": ArrayImages}


@pytest.mark.parametrize("kind", list(LAZY_TYPES))
def test_lazy_load_gives_the_same_set_as_the_eager_one(kind, inputs):
    eager = load_imageset(inputs[kind], role="train", pixel_budget_mb=EAGER)
    lazy = load_imageset(inputs[kind], role="train", pixel_budget_mb=LAZY)
    assert isinstance(eager.images, tuple) and eager.in_memory
    assert type(lazy.images) is LAZY_TYPES[kind] and not lazy.in_memory
    assert lazy.ids == eager.ids and lazy.patient_ids == eager.patient_ids and lazy.labels == eager.labels
    assert lazy.files == eager.files
    assert lazy.pixel_digests == eager.pixel_digests
    assert lazy.content_sha256 == eager.content_sha256
    assert lazy.summary("train") == eager.summary("train")
    np.testing.assert_array_equal(lazy.shapes, eager.shapes)
    assert len(lazy.images) == len(eager.images) == len(eager)
    for a, b in zip(lazy.images, eager.images, strict=True):  # iteration reads in chunks
        assert a.dtype == np.float32 and not a.flags.writeable
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["manifest", "npy"])
def test_lazy_load_gives_the_same_embeddings(kind, inputs, tmp_path):
    eager = load_imageset(inputs[kind], role="train", pixel_budget_mb=EAGER)
    lazy = load_imageset(inputs[kind], role="train", pixel_budget_mb=LAZY)
    emb = get_embedder("pixels")
    want = emb.embed(eager, batch_size=16)
    # Bit-identical: the same float32 pixels go through the same batches.
    np.testing.assert_array_equal(emb.embed(lazy, batch_size=16), want)
    # Through the cache, in shards smaller than the set (and again from the stored shards).
    cache = EmbeddingCache(tmp_path / "cache")
    for _ in range(2):
        got = cache.embed(emb.fingerprint(), lazy.pixel_digests, lazy.images, emb.dim, lambda c: emb.embed(c, batch_size=16), shard_size=50)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("kind", ["manifest", "npy"])
def test_embedding_a_lazy_set_reads_one_batch_at_a_time(kind, inputs, tmp_path, monkeypatch):
    """A cache shard (here 50 images) is handed to the embedder as a lazy view, which reads one
    batch (16) at a time: the shard's pixels are never held together (at 2048 x 2048, a shard
    of 2,048 images would be 32 GiB). With and without the cache."""
    from privaudit.pipeline import _embed_in_shards

    lazy = load_imageset(inputs[kind], role="train", pixel_budget_mb=LAZY)
    reads: list[int] = []
    real_read = LazyImages.read
    monkeypatch.setattr(LazyImages, "read", lambda self, rows: (reads.append(len(rows)), real_read(self, rows))[1])
    emb = get_embedder("pixels")
    compute = lambda c: emb.embed(c, batch_size=16)  # noqa: E731
    cache = EmbeddingCache(tmp_path / "cache")
    got = cache.embed(emb.fingerprint(), lazy.pixel_digests, lazy.images, emb.dim, compute, shard_size=50)
    assert reads and max(reads) <= 16 and sum(reads) == len(lazy)
    reads.clear()
    np.testing.assert_array_equal(_embed_in_shards(lazy.images, emb.dim, compute, shard_size=50), got)
    assert max(reads) <= 16 and sum(reads) == len(lazy)


def test_large_images_are_scanned_and_iterated_a_few_at_a_time(tmp_path, monkeypatch):
    """READ_CHUNK images per step, but at most READ_BYTES of them: images of 1 MiB (512 x 512
    float32) are read 64 at a time with a 64 MiB step, here 2 at a time with a 2 MiB one."""
    import privaudit.data.lazy as lazy_module

    monkeypatch.setattr(lazy_module, "READ_BYTES", 2 * 2**20)
    assert lazy_module.rows_per_read(2**20) == 2 and lazy_module.rows_per_read(1) == READ_CHUNK
    assert lazy_module.rows_per_read(10 * 2**20) == 1
    arr = np.random.default_rng(1).random((5, 512, 512), dtype=np.float32)
    np.save(tmp_path / "x.npy", arr)
    lazy = load_imageset(tmp_path / "x.npy", pixel_budget_mb=LAZY)
    reads: list[int] = []
    real_read = LazyImages.read
    monkeypatch.setattr(LazyImages, "read", lambda self, rows: (reads.append(len(rows)), real_read(self, rows))[1])
    np.testing.assert_array_equal(np.stack(list(lazy.images)), arr)
    assert reads == [2, 2, 1]


def test_the_sequence_behaves_like_the_tuple(inputs):
    eager = load_imageset(inputs["npy"], pixel_budget_mb=EAGER)
    lazy = load_imageset(inputs["npy"], pixel_budget_mb=LAZY)
    seq, ref = lazy.images, eager.images
    n = len(ref)
    for index in (0, 7, n - 1, -1, -n, np.int64(3)):
        np.testing.assert_array_equal(seq[index], ref[index])
    for sl in (slice(5, 17), slice(None, None, 7), slice(-3, None), slice(10, 2), slice(n - 2, n + 50)):
        got = seq[sl]
        assert isinstance(got, tuple) and len(got) == len(ref[sl])
        for a, b in zip(got, ref[sl]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError):
        seq[n]
    with pytest.raises(IndexError):
        seq[-n - 1]
    with pytest.raises(TypeError):
        seq[1.5]
    # A subset of a lazy set is lazy too, in the order asked for, with its metadata.
    picks = [9, 2, 2 + 1, n - 1]
    sub, ref_sub = lazy.subset(picks), eager.subset(picks)
    assert isinstance(sub.images, LazyImages) and sub.ids == ref_sub.ids
    assert sub.pixel_digests == ref_sub.pixel_digests
    for a, b in zip(sub.images, ref_sub.images, strict=True):
        np.testing.assert_array_equal(a, b)


def test_iteration_reads_across_chunks(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(2 * READ_CHUNK + 7, 6, 5), dtype=np.uint8)
    np.save(tmp_path / "x.npy", arr)
    lazy = load_imageset(tmp_path / "x.npy", pixel_budget_mb=LAZY)
    got = np.stack(list(lazy.images))
    np.testing.assert_array_equal(got, arr.astype(np.float32) / np.float32(255.0))
    np.testing.assert_array_equal(np.stack(lazy.images[READ_CHUNK - 2 : READ_CHUNK + 3]), got[READ_CHUNK - 2 : READ_CHUNK + 3])


def test_the_pixel_budget_decides_what_stays_in_memory(inputs, study, monkeypatch):
    one = study.train.images[0].nbytes
    n = len(study.train)
    # Exactly the set's pixels fit; one byte less does not.
    assert load_imageset(inputs["manifest"], pixel_budget_mb=n * one / 2**20).in_memory
    assert not load_imageset(inputs["manifest"], pixel_budget_mb=(n * one - 1) / 2**20).in_memory
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "0")
    assert not load_imageset(inputs["manifest"]).in_memory
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "inf")
    assert load_imageset(inputs["manifest"]).in_memory
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "lots")
    with pytest.raises(InputError, match="PRIVAUDIT_PIXEL_BUDGET_MB='lots' is not a number"):
        load_imageset(inputs["manifest"])
    with pytest.raises(InputError, match="pixel budget must be"):
        pixel_budget_bytes(-1.0)


def test_an_npy_with_nan_is_still_refused_with_its_count(tmp_path):
    arr = np.zeros((600, 8, 8), np.float32)
    arr[[300, 400, 599], 1, 1] = np.nan  # beyond the first read chunk
    np.save(tmp_path / "x.npy", arr)
    with pytest.raises(InputError, match=r"3 image\(s\) contain NaN or infinite values \(first: index 300\)"):
        load_imageset(tmp_path / "x.npy", role="train", pixel_budget_mb=LAZY)


def test_a_corrupt_file_in_a_lazy_folder_is_skipped_listed_and_reported(study, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "synthetic"
    for k, img in enumerate(study.leaky.images[:60]):
        write_png(folder / f"{k:03d}.png", np.rint(img * 255).astype(np.uint8))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    s = load_imageset(folder, role="synthetic", pixel_budget_mb=LAZY)
    assert not s.in_memory and len(s) == 60 and "broken.png" not in s.ids
    assert [k.path for k in s.skipped] == ["broken.png"]
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "0")
    out = tmp_path / "out"
    code = main(["audit", "--train", str(_train_folder(study, tmp_path)), "--synthetic", str(folder), "--checks", "copies",
                 "--embedder", "pixels", "--out", str(out)])
    assert code in (0, 1)
    inputs = json.loads((out / "results.json").read_text())["inputs"]
    assert inputs["synthetic"]["n_skipped"] == 1
    assert inputs["synthetic"]["skipped"][0]["path"] == "broken.png"
    assert "broken.png" in (out / "report.html").read_text()


def _train_folder(study, tmp_path: Path) -> Path:
    folder = tmp_path / "train"
    if not folder.exists():
        for k, img in enumerate(study.train.images):
            write_png(folder / f"{k:03d}.png", np.rint(img * 255).astype(np.uint8))
    return folder


def _changed_during_embedding(monkeypatch, change) -> None:
    """Run ``change()`` after the inputs are loaded and before the first image is embedded."""
    import privaudit.pipeline as pipeline

    real = pipeline._embed
    done = []

    def embed_after_change(*args, **kwargs):
        if not done:
            change()
            done.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "_embed", embed_after_change)


def _rewrite_png(path: Path) -> None:
    arr = np.asarray(Image.open(path)).copy()
    arr[0, 0] = 255 - arr[0, 0]
    Image.fromarray(arr).save(path)


def _rewrite_npy_row(path: Path) -> None:
    arr = np.load(path)
    arr[5] = arr[5][::-1]
    np.save(path, arr)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


CHANGES = [
    ("png-deleted", "folder", lambda p: (p / "003.png").unlink(), r"003\.png can no longer be read \(cannot open: No such file"),
    ("png-rewritten", "folder", lambda p: _rewrite_png(p / "010.png"), r"010\.png changed on disk since it was loaded"),
    ("png-replaced-by-garbage", "folder", lambda p: (p / "004.png").write_bytes(b"garbage"), r"004\.png can no longer be read \(not a recognised image file\)"),
    ("npy-row-rewritten", "npy", _rewrite_npy_row, r"train\.npy\[5\] changed on disk since it was loaded"),
    ("npy-truncated", "npy", _truncate, r"train\.npy can no longer be read \(file is shorter than its header says"),
    ("npy-deleted", "npy", lambda p: p.unlink(), r"train\.npy can no longer be read \(No such file"),
]


@pytest.mark.parametrize("case_id, kind, change, message", CHANGES, ids=[c[0] for c in CHANGES])
def test_an_input_changed_during_the_audit_stops_it_with_one_line(case_id, kind, change, message, study, study_files, tmp_path, monkeypatch, capsys):
    if kind == "folder":
        train = _train_folder(study, tmp_path)
        target = train
    else:
        train = tmp_path / "train.npy"
        np.save(train, np.stack(study.train.images))
        target = train
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "0")
    _changed_during_embedding(monkeypatch, lambda: change(target))
    out = tmp_path / "out"
    code = main(["audit", "--train", str(train), "--synthetic", str(study_files["leaky"]), "--checks", "copies",
                 "--embedder", "pixels", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line.startswith("privaudit: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("privaudit: error: --train: ")
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()  # nothing half-written


def test_a_file_rewritten_with_the_same_pixels_is_not_a_change(study, study_files, tmp_path, monkeypatch):
    train = _train_folder(study, tmp_path)

    def resave() -> None:  # new bytes (another compression level), the same pixels
        for p in sorted(train.glob("*.png"))[:5]:
            Image.open(p).save(p, compress_level=1)

    monkeypatch.setenv(ENV_PIXEL_BUDGET, "0")
    _changed_during_embedding(monkeypatch, resave)
    result = audit(train, study_files["leaky"], config=AuditConfig(checks=("copies",), embedders=("pixels",)), cache=False)
    assert result.checks["copies"].status.value != "not_assessed"


def test_a_thumbnail_file_changed_after_the_checks_leaves_the_report_without_it(study, study_files, tmp_path, monkeypatch, caplog):
    import privaudit.pipeline as pipeline

    real = pipeline.write_outputs
    moved = tmp_path / "moved"

    def write_after_change(result, out_dir, **kwargs):
        shutil.move(str(study_files["train"].parent / "train"), moved)  # every training image is gone
        try:
            return real(result, out_dir, **kwargs)
        finally:
            shutil.move(str(moved), study_files["train"].parent / "train")

    monkeypatch.setattr(pipeline, "write_outputs", write_after_change)
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "0")
    out = tmp_path / "out"
    result = audit(study_files["train"], study_files["leaky"], config=AuditConfig(checks=("copies",), embedders=("pixels",)), out=out, cache=False)
    assert result.checks["copies"].metrics["copy_rate"].value > 0
    html = (out / "report.html").read_text()
    assert "no image" in html
    assert any("no thumbnail for train/" in r.getMessage() for r in caplog.records)


def _checks_json(out: Path) -> dict:
    data = json.loads((out / "results.json").read_text())
    return {"checks": data["checks"], "inputs": data["inputs"], "verdict": data["verdict"], "patients": data["patients"]}


def test_the_audit_result_is_the_same_eager_and_lazy(study_files, tmp_path, monkeypatch):
    """Every check's figures, the inputs and the verdict: identical whether the images were held
    in memory or read from disk. No cache, so both runs read and embed every image."""
    config = AuditConfig(checks=("copies", "metadata", "quality", "membership"), embedders=("pixels",))
    args = (study_files["train"], study_files["leaky"], study_files["holdout"])
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "inf")
    audit(*args, config=config, out=tmp_path / "eager", cache=False)
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "0")
    audit(*args, config=config, out=tmp_path / "lazy", cache=False)
    eager, lazy = _checks_json(tmp_path / "eager"), _checks_json(tmp_path / "lazy")
    assert eager["checks"]["copies"]["metrics"]["copy_rate"]["value"] > 0  # the leaky set is caught
    assert lazy == eager


@pytest.mark.slow
def test_the_default_audit_with_fitted_spaces_is_the_same_eager_and_lazy(study_files, tmp_path, monkeypatch):
    """The default checks, a fitted space (copydetect fits on a subsample of the training
    images), and the quality check's CNN classifier, which reads pixels through the sequence."""
    config = AuditConfig.from_dict({"embedders": ["pixels", "copydetect"], "quality": {"cas_classifier": "cnn"}})
    args = (study_files["train"], study_files["leaky"], study_files["holdout"])
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "inf")
    audit(*args, config=config, out=tmp_path / "eager", cache=False)
    monkeypatch.setenv(ENV_PIXEL_BUDGET, "0")
    audit(*args, config=config, out=tmp_path / "lazy", cache=False)
    assert _checks_json(tmp_path / "lazy") == _checks_json(tmp_path / "eager")


@pytest.mark.realdata
def test_real_chest_xrays_read_from_disk_match_the_held_ones(tmp_path):
    """The COVID-19 chest X-rays (345 images, 256 px, uint8): as the .npz they ship in and as
    an .npy, read from disk they give the held set's pixels, digests and patient ids."""
    from conftest import realdata

    npz = realdata("covid_chestxray/covid_cxr_licensed_256.npz")
    with np.load(npz) as data:
        np.save(tmp_path / "cxr.npy", data["images"])
    for path in (npz, tmp_path / "cxr.npy"):
        eager = load_imageset(path, pixel_budget_mb=EAGER)
        lazy = load_imageset(path, pixel_budget_mb=LAZY)
        assert not lazy.in_memory and len(lazy) == 345
        assert lazy.pixel_digests == eager.pixel_digests and lazy.patient_ids == eager.patient_ids
        for a, b in zip(lazy.images, eager.images, strict=True):
            np.testing.assert_array_equal(a, b)
