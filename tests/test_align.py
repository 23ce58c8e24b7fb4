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
    h, v = template.shape
    best = -1.0
    t = template.ravel().astype(np.float64)
    for y in range(image.shape[0] - h + 1):
        for x in range(image.shape[1] - v + 1):
            w = image[y : y + h, x : x + v].ravel().astype(np.float64)
            if w.std() > 1e-6:
                best = max(best, float(np.corrcoef(t, w)[0, 1]))
    return best


def test_aligned_similarity_equals_a_slow_sliding_correlation():
    """One template (no mirror, angle 0, crop 1): the batched convolution equals the loops,
    and the mirrored template is the other one tried."""
    rng = np.random.default_rng(0)
    options = align.AlignOptions(size=16, retrieval_side=8, candidates=2, angles=(0.0,), crops=(1.0,), core=0.5, crop_core=0.5)
    images = [rng.random((16, 16), dtype=np.float32) for _ in range(5)]
    query = align.prepare(images[:2], options, role="query")
    base = align.prepare(images[2:], options, role="base")
    cands = np.array([[0, 1], [2, 0]])
    got = align.aligned_similarity(query, base, cands, options)
    for i in range(2):
        core = query.small[i][4:12, 4:12]
        expected = max(_slow_ncc(c, base.small[j]) for j in cands[i] for c in (core, query.small[i][:, ::-1][4:12, 4:12]))
        assert got.similarity[i] == pytest.approx(expected, abs=1e-4)


def test_rectangular_templates_equal_the_slow_sliding_correlation():
    """Crop factors 1 and 0.75 with ``aspect`` 0.25: four template shapes (16 x 16, 16 x 12,
    12 x 16, 12 x 12 from a 16 px core), each mirrored; the batched convolution equals the loops
    over every shape."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(2)
    options = align.AlignOptions(size=24, retrieval_side=8, candidates=2, angles=(0.0,), crops=(1.0, 0.75), aspect=0.25, core=2 / 3, crop_core=2 / 3, smooth=0.0)
    assert options.crop_pairs == ((1.0, 1.0), (0.75, 0.75), (1.0, 0.75), (0.75, 1.0)) and options.n_templates == 8
    # Square factors at every angle, rectangular pairs unrotated: 2 x (3 x 2 + 2).
    assert align.AlignOptions(angles=(-4.0, 0.0, 4.0), crops=(1.0, 0.75), aspect=0.25).n_templates == 16
    assert align.AlignOptions().n_templates == 2 * (5 * 5 + 14)
    images = [rng.random((24, 24), dtype=np.float32) for _ in range(4)]
    query = align.prepare(images[:1], options, role="query")
    base = align.prepare(images[1:], options, role="base")
    got = align.aligned_similarity(query, base, np.array([[0, 2]]), options)
    core = torch.from_numpy(query.small[0][4:20, 4:20].copy())[None, None]
    expected = -1.0
    for rows, columns in ((16, 16), (16, 12), (12, 16), (12, 12)):
        t = F.interpolate(core, size=(rows, columns), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy() if (rows, columns) != (16, 16) else core[0, 0].numpy()
        for template in (t, F.interpolate(torch.flip(core, dims=[-1]), size=(rows, columns), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()):
            expected = max(expected, *(_slow_ncc(template, base.small[j]) for j in (0, 2)))
    assert got.similarity[0] == pytest.approx(expected, abs=1e-4)
    # With angles: the square templates come at every angle, the rectangular ones unrotated
    # (the same as with angle 0 alone).
    rotating = align.AlignOptions(size=24, retrieval_side=8, angles=(-4.0, 0.0, 4.0), crops=(1.0, 0.75), aspect=0.25, core=2 / 3, crop_core=2 / 3, smooth=0.0)
    shapes = {shape: t for shape, t in align._templates(query.small, rotating)}
    assert {shape: t.shape[1] for shape, t in shapes.items()} == {(16, 16): 6, (12, 12): 6, (16, 12): 2, (12, 16): 2}
    upright = {shape: t for shape, t in align._templates(query.small, options)}
    for shape in ((16, 12), (12, 16)):
        np.testing.assert_allclose(shapes[shape].numpy(), upright[shape].numpy(), atol=1e-6)


def test_crop_templates_take_the_whole_query_and_the_uncropped_its_core():
    """``crop_core`` 1: a template with a crop factor below 1 is the whole query shrunk (a crop
    keeps no filled border), the factor-1 template the central ``core``; a whole-image crop
    template equals the slow sliding correlation of the resized query."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(4)
    options = align.AlignOptions(size=24, retrieval_side=8, candidates=2, angles=(0.0,), crops=(1.0, 0.75), aspect=0.0, core=2 / 3, crop_core=1.0, smooth=0.0)
    images = [rng.random((24, 24), dtype=np.float32) for _ in range(3)]
    query = align.prepare(images[:1], options, role="query")
    base = align.prepare(images[1:], options, role="base")
    shapes = [shape for shape, _ in align._templates(query.small, options)]
    assert shapes == [(16, 16), (18, 18)], shapes  # 24 x 2/3 for factor 1, 24 x 0.75 for factor 0.75
    got = align.aligned_similarity(query, base, np.array([[0, 1]]), options)
    whole = torch.from_numpy(query.small[0].copy())[None, None]
    expected = -1.0
    for template in (query.small[0][4:20, 4:20], query.small[0][:, ::-1][4:20, 4:20]):
        expected = max(expected, *(_slow_ncc(template, base.small[j]) for j in (0, 1)))
    for flipped in (whole, torch.flip(whole, dims=[-1])):
        t = F.interpolate(flipped, size=(18, 18), mode="bilinear", antialias=True, align_corners=False)[0, 0].numpy()
        expected = max(expected, *(_slow_ncc(t, base.small[j]) for j in (0, 1)))
    assert got.similarity[0] == pytest.approx(expected, abs=1e-4)


def test_a_crop_that_changed_the_aspect_ratio_is_matched_by_a_rectangular_template(tiny):
    """A crop of 80 % of the height and 95 % of the width, resized back to a square: templates
    whose two crop factors differ (``aspect`` 0.15) match it better than square ones alone."""
    from PIL import Image

    train = tiny.train
    sims = {}
    for aspect in (0.0, 0.15):
        options = align.AlignOptions(aspect=aspect)
        base = align.prepare(train.images, options, role="base")
        copies, sources = [], []
        for i in range(4):
            im = train.images[i]
            h, w = im.shape
            ch, cw = int(round(h * 0.8)), int(round(w * 0.95))
            cut = np.ascontiguousarray(im[(h - ch) // 2 : (h - ch) // 2 + ch, :cw])
            copies.append(np.asarray(Image.fromarray(cut, mode="F").resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32))
            sources.append([i])
        sims[aspect] = align.aligned_similarity(align.prepare(copies, options, role="query"), base, np.array(sources), options).similarity
    assert (sims[0.15] > sims[0.0] + 0.005).all(), sims
    assert (sims[0.15] > 0.99).all(), sims


def test_rotated_query_views_make_a_rotated_copys_source_the_first_candidate(tiny):
    """Copies rotated by 10 degrees: with the query also searched at -6 and 6 degrees, each
    copy's first candidate is a scan of its source's patient (a phantom patient's two scans are
    near alike); searched unrotated, under 80 % of them (58 % when written)."""
    train = tiny.train
    pids = np.asarray(train.patient_ids)
    copies = [transforms._affine(im, angle=10.0 if i % 2 else -10.0) for i, im in enumerate(train.images)]
    share = {}
    for angles in ((0.0,), (-6.0, 0.0, 6.0)):
        options = align.AlignOptions(retrieval_angles=angles)
        base = align.prepare(train.images, options, role="base")
        first = align.candidates(align.prepare(copies, options, role="query"), base, 1)[:, 0]
        share[angles] = float((pids[first] == pids).mean())
    assert share[(-6.0, 0.0, 6.0)] == 1.0 and share[(0.0,)] < 0.8, share


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
    with pytest.raises(ValueError, match="aspect"):
        align.AlignOptions(aspect=-0.1)
    with pytest.raises(ValueError, match="crop_core"):
        align.AlignOptions(crop_core=1.5)
    with pytest.raises(ValueError, match="retrieval_angles"):
        align.AlignOptions(retrieval_angles=())
    with pytest.raises(ValueError, match="degrees"):
        align.AlignOptions(angles=(0.0, 90.0))


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
