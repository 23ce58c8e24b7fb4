"""Aligned correlation (privaudit.align): planted geometric copies, a slow reference, candidates."""

from __future__ import annotations

import numpy as np
import pytest

from privaudit import align, transforms
from privaudit.phantoms import make_study


@pytest.fixture(scope="module")
def tiny():
    return make_study(n_train_patients=12, n_holdout_patients=4, scans_per_patient=2, n_synthetic=8, size=64, seed=3)


def _slow_ncc(template: np.ndarray, image: np.ndarray) -> float:
    """The highest Pearson correlation of ``template`` with any window of ``image``, by loops."""
    h = template.shape[0]
    best = -1.0
    t = template.ravel().astype(np.float64)
    for y in range(image.shape[0] - h + 1):
        for x in range(image.shape[1] - h + 1):
            w = image[y : y + h, x : x + h].ravel().astype(np.float64)
            if w.std() > 1e-6:
                best = max(best, float(np.corrcoef(t, w)[0, 1]))
    return best


def test_aligned_similarity_equals_a_slow_sliding_correlation():
    """One template (no mirror, angle 0, crop 1): the batched convolution equals the loops,
    and the mirrored template is the other one tried."""
    rng = np.random.default_rng(0)
    options = align.AlignOptions(size=16, retrieval_side=8, candidates=2, angles=(0.0,), crops=(1.0,), core=0.5)
    images = [rng.random((16, 16), dtype=np.float32) for _ in range(5)]
    query = align.prepare(images[:2], options, role="query")
    base = align.prepare(images[2:], options, role="base")
    cands = np.array([[0, 1], [2, 0]])
    got = align.aligned_similarity(query, base, cands, options)
    for i in range(2):
        core = query.small[i][4:12, 4:12]
        expected = max(_slow_ncc(c, base.small[j]) for j in cands[i] for c in (core, query.small[i][:, ::-1][4:12, 4:12]))
        assert got.similarity[i] == pytest.approx(expected, abs=1e-4)


def test_each_geometric_copy_is_linked_to_its_source_above_every_other_image(tiny):
    rng = np.random.default_rng(1)
    train = tiny.train
    picks = rng.choice(len(train), 6, replace=False)
    families = ("flip", "crop", "rotate", "shift", "combo", "exact")
    copies = [transforms.apply(f, train.images[int(i)], rng) for f, i in zip(families, picks)]
    options = align.AlignOptions()
    base = align.prepare(train.images, options, role="base")
    query = align.prepare(copies, options, role="query")
    cands = align.candidates(query, base, options.candidates)
    assert all(int(i) in row for i, row in zip(picks, cands)), "the source is among the candidates"
    found = align.aligned_similarity(query, base, cands, options)
    # Linked to the source's patient (a phantom patient's two scans differ a little: a crop of
    # one may align as well with the other), and to the very scan for the exact copy.
    pids = np.asarray(train.patient_ids)
    assert pids[found.nearest].tolist() == pids[picks].tolist()
    assert found.nearest[-1] == picks[-1]
    # Another patient's scans, aligned the same way, stay below every copy.
    others = align.prepare(tiny.holdout.images, options, role="query")
    strangers = align.aligned_similarity(others, base, align.candidates(others, base, options.candidates), options)
    assert found.similarity.min() > strangers.similarity.max(), (found.similarity, strangers.similarity.max())


def test_batch_size_does_not_change_the_result(tiny):
    options = align.AlignOptions()
    base = align.prepare(tiny.train.images, options, role="base")
    query = align.prepare(tiny.leaky.images[:20], options, role="query")
    cands = align.candidates(query, base, options.candidates)
    one = align.aligned_similarity(query, base, cands, options, batch=1)
    many = align.aligned_similarity(query, base, cands, options, batch=32)
    # The same float32 sums in another grouping: equal to rounding.
    np.testing.assert_allclose(one.similarity, many.similarity, atol=1e-5)
    assert one.nearest.tolist() == many.nearest.tolist()


def test_candidates_are_distinct_and_leave_the_own_group_out(tiny):
    options = align.AlignOptions(candidates=5)
    holdout = tiny.holdout
    groups = np.asarray(holdout.patient_ids)
    base = align.prepare(holdout.images, options, role="base")
    query = align.prepare(holdout.images, options, role="query")
    cands = align.candidates(query, base, 5, groups=(groups, groups))
    n_other = [int((groups != g).sum()) for g in groups]
    for i, row in enumerate(cands):
        got = row[row >= 0]
        assert len(got) == min(5, n_other[i]) and len(set(got.tolist())) == len(got)
        assert not (groups[got] == groups[i]).any()
    # Fewer admissible images than asked for: the rest is -1.
    assert (align.candidates(query, base, 20, groups=(groups, groups)) == -1).any()


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="size"):
        align.AlignOptions(size=8)
    with pytest.raises(ValueError, match="candidates"):
        align.AlignOptions(candidates=0)
    with pytest.raises(ValueError, match="crop factors"):
        align.AlignOptions(crops=(1.0, 0.1))
    with pytest.raises(ValueError, match="smooth"):
        align.AlignOptions(smooth=-0.5)
    with pytest.raises(ValueError, match="smooth"):
        align.AlignOptions(size=32, smooth=5.0)


def test_smoothing_lifts_noisy_copies_more_than_other_images(tiny):
    """Pixel noise lowers a copy's NCC with its source; the blur averages it away. A noisy copy
    gains more from it than the best of ten images of other patients does (in the ratio score
    the copies check uses), and an exact copy stays at 1."""
    rng = np.random.default_rng(5)
    train = tiny.train
    picks = rng.choice(len(train), 4, replace=False)
    noisy = [np.clip(train.images[int(i)] + rng.normal(0, 0.12, train.images[int(i)].shape), 0, 1).astype(np.float32) for i in picks]
    exact = [train.images[int(picks[0])]]
    pids = np.asarray(train.patient_ids)
    gains = []
    for smooth in (0.0, 1.0):
        options = align.AlignOptions(smooth=smooth)
        base = align.prepare(train.images, options, role="base")
        query = align.prepare(noisy + exact, options, role="query")
        own = align.aligned_similarity(query, base, np.array([[int(i)] for i in picks] + [[int(picks[0])]]), options).similarity
        # Ten images of other patients for each noisy copy: the best of them.
        others = np.array([[j for j in range(len(train)) if pids[j] != pids[int(i)]][: options.candidates] for i in picks])
        other = align.aligned_similarity(align.prepare(noisy, options, role="query"), base, others, options).similarity
        assert own[-1] == pytest.approx(1.0, abs=1e-4)
        gains.append((own[:-1], other))
    (own0, other0), (own1, other1) = gains
    assert (own1 > own0).all(), "the blur raises each noisy copy's NCC with its source"
    # The copies check's ratio score: log of (1 - the other patients' best) / (1 - its source's).
    ratio = lambda own, other: np.log((1 - other) / (1 - own))  # noqa: E731
    assert (ratio(own1, other1) > ratio(own0, other0) + 0.3).all(), "and lifts its ratio score over other patients"


def test_a_set_prepared_once_serves_as_queries_and_as_a_base(tiny):
    """as_role reuses the resized images: the same views as preparing the set again."""
    options = align.AlignOptions()
    query = align.prepare(tiny.holdout.images, options, role="query")
    again = align.prepare(tiny.holdout.images, options, role="base")
    reused = align.as_role(query, options, role="base")
    assert reused.small is query.small
    np.testing.assert_array_equal(reused.views, again.views)
    found = align.match(query, reused, options, groups=(np.asarray(tiny.holdout.patient_ids),) * 2)
    assert np.isfinite(found.similarity).all() and (found.similarity >= -1).all()
