import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyro_fusion.metrics import (
    adjusted_rand_index,
    best_matching_accuracy,
    contingency_table,
    hausdorff,
    match_labels,
    ot_distance,
)

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None)

coordinates = st.floats(min_value=-100, max_value=100, allow_nan=False, allow_infinity=False, width=64)


@st.composite
def point_set_pairs(draw, min_points=1, max_points=6):
    """Two point sets in the same dimension, possibly of different sizes."""
    dim = draw(st.integers(1, 3))
    n, m = draw(st.integers(min_points, max_points)), draw(st.integers(min_points, max_points))
    a = draw(hnp.arrays(np.float64, (n, dim), elements=coordinates))
    b = draw(hnp.arrays(np.float64, (m, dim), elements=coordinates))
    return a, b


labellings = st.lists(st.integers(0, 4), min_size=1, max_size=30)


@st.composite
def labelling_pairs(draw):
    pred = draw(labellings)
    true = draw(st.lists(st.integers(0, 4), min_size=len(pred), max_size=len(pred)))
    return np.array(pred), np.array(true)


# ---------------------------------------------------------------------------------------------
# Hausdorff


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([[0.0, 0.0]], [[3.0, 4.0]], 5.0),
        ([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [4.0, 0.0]], 3.0),
        ([[0.0], [10.0]], [[1.0], [2.0], [9.0]], 2.0),
        ([[0.0], [10.0]], [[4.0]], 6.0),
        ([0.0, 1.0, 2.0], [2.0, 1.0, 0.0], 0.0),
        ([[1.0, 1.0, 1.0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 3.0]], 2.0),
    ],
)
def test_hausdorff_hand_computed(a, b, expected):
    assert hausdorff(a, b) == pytest.approx(expected, abs=1e-12)


def brute_force_hausdorff(a, b):
    distances = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    return max(distances.min(1).max(), distances.min(0).max())


@PROPERTY_SETTINGS
@given(point_set_pairs())
def test_hausdorff_properties(pair):
    a, b = pair
    d = hausdorff(a, b)
    assert isinstance(d, float)
    assert d >= 0
    assert d == hausdorff(b, a)
    assert d == pytest.approx(brute_force_hausdorff(a, b), rel=1e-9, abs=1e-9)


@PROPERTY_SETTINGS
@given(point_set_pairs(), st.randoms(use_true_random=False))
def test_hausdorff_zero_iff_same_set(pair, rng):
    a, b = pair
    # The same set, reordered and with duplicates, is at distance exactly 0.
    same = np.concatenate([a, a[: rng.randint(0, len(a))]])[rng.sample(range(len(a)), len(a))]
    assert hausdorff(a, same) == 0.0
    # Adding any point not in the set moves it away by that point's distance to the set.
    extra = b[0] + 1000.0
    grown = np.concatenate([a, extra[None]])
    assert hausdorff(a, grown) == pytest.approx(np.sqrt(((a - extra) ** 2).sum(-1)).min(), rel=1e-12)
    assert hausdorff(a, grown) > 0


def test_hausdorff_accepts_torch_and_numpy_without_modifying_them():
    a = torch.randn(7, 3, requires_grad=True)
    b = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    a_before, b_before = a.detach().clone(), b.copy()
    assert hausdorff(a, b) == pytest.approx(brute_force_hausdorff(a.detach().double().numpy(), b.astype(float)))
    assert torch.equal(a.detach(), a_before) and np.array_equal(b, b_before)


# ---------------------------------------------------------------------------------------------
# Optimal transport


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ([[0.0, 0.0]], [[3.0, 4.0]], 5.0),
        ([[0.0], [1.0]], [[0.0], [3.0]], 1.0),
        ([[0.0], [1.0]], [[1.0], [0.0]], 0.0),
        ([[0.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 1.0]], 1.0),
        ([[0.0], [2.0]], [[1.0]], 1.0),
        ([[0.0]], [[0.0], [1.0], [2.0]], 1.0),
        ([[0.0], [3.0], [6.0]], [[0.0], [6.0]], 1.0),  # 1/3 of the mass moves from 3 to 0 or 6
        ([[0.0], [1.0]], [[0.0], [0.0], [1.0], [1.0]], 0.0),
    ],
)
def test_ot_hand_computed(a, b, expected):
    assert ot_distance(a, b) == pytest.approx(expected, abs=1e-9)


def one_dimensional_w1(a, b):
    """Closed form in 1-D: W1 = integral of |F_a - F_b| over the line."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid[:-1], side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(cdf_a - cdf_b) * np.diff(grid)))


@PROPERTY_SETTINGS
@given(point_set_pairs(max_points=7).filter(lambda pair: pair[0].shape[1] == 1))
def test_ot_matches_one_dimensional_closed_form(pair):
    a, b = pair
    assert ot_distance(a, b) == pytest.approx(one_dimensional_w1(a[:, 0], b[:, 0]), rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("n", [1, 2, 4, 5])
@pytest.mark.parametrize("dim", [1, 3])
def test_ot_equal_sizes_matches_best_permutation(n, dim):
    rng = np.random.default_rng(n * 10 + dim)
    a, b = rng.normal(size=(n, dim)), rng.normal(size=(n, dim))
    cost = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    best = min(cost[range(n), list(p)].mean() for p in itertools.permutations(range(n)))
    assert ot_distance(a, b) == pytest.approx(best, rel=1e-12)


@PROPERTY_SETTINGS
@given(point_set_pairs())
def test_ot_properties(pair):
    a, b = pair
    d = ot_distance(a, b)
    assert isinstance(d, float)
    assert d >= -1e-9
    assert d == pytest.approx(ot_distance(b, a), rel=1e-7, abs=1e-7)
    # Jensen: transporting uniform mass moves the mean by at most the transport cost.
    assert d >= np.linalg.norm(a.mean(0) - b.mean(0)) - 1e-7 * (1 + np.abs(a).max() + np.abs(b).max())
    # No plan moves any mass further than the largest pairwise distance.
    assert d <= np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).max() + 1e-7
    assert ot_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert ot_distance(a, np.concatenate([a, a])) == pytest.approx(0.0, abs=1e-7)


# ---------------------------------------------------------------------------------------------
# Segmentation: contingency table, best matching, ARI


def test_contingency_table_counts():
    table, pred_labels, true_labels = contingency_table(np.array([3, 3, 1, 1, 1]), [0, 2, 2, 2, 0])
    assert pred_labels.tolist() == [1, 3] and true_labels.tolist() == [0, 2]
    assert table.tolist() == [[1, 2], [1, 1]]


@pytest.mark.parametrize(
    "pred, true, expected_accuracy, expected_mapping",
    [
        ([0, 0, 1, 1], [5, 5, 7, 7], 1.0, {0: 5, 1: 7}),
        ([1, 1, 0, 0], [0, 0, 1, 1], 1.0, {1: 0, 0: 1}),
        ([2, 2, 0, 0, 1], [0, 0, 1, 1, 1], 0.8, {2: 0, 0: 1}),
        ([0, 0, 0, 0], [0, 1, 2, 2], 0.5, {0: 2}),
        ([0, 1, 2, 3], [0, 0, 0, 0], 0.25, {0: 0}),
        # Table [[3, 2], [2, 0]]: greedy takes the 3 and then gets 0 (3 hits); the optimum is 2 + 2 = 4.
        ([0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0, 0], 4 / 7, {0: 1, 1: 0}),
    ],
)
def test_best_matching_hand_computed(pred, true, expected_accuracy, expected_mapping):
    assert best_matching_accuracy(pred, true) == pytest.approx(expected_accuracy)
    assert match_labels(pred, true) == expected_mapping


def brute_force_matching_accuracy(pred, true):
    """Best accuracy over every injective relabelling of the predicted labels (some may stay unmatched)."""
    pred_labels, true_labels = np.unique(pred), np.unique(true)
    best = 0
    for k in range(1, min(len(pred_labels), len(true_labels)) + 1):
        for chosen in itertools.permutations(pred_labels, k):
            for targets in itertools.permutations(true_labels, k):
                hits = sum(np.sum((pred == p) & (true == t)) for p, t in zip(chosen, targets))
                best = max(best, hits)
    return best / len(pred)


@settings(max_examples=40, deadline=None)
@given(labelling_pairs().filter(lambda pair: len(np.unique(pair[0])) <= 4 and len(np.unique(pair[1])) <= 4))
def test_best_matching_is_optimal_and_consistent(pair):
    pred, true = pair
    accuracy = best_matching_accuracy(pred, true)
    assert accuracy == pytest.approx(brute_force_matching_accuracy(pred, true))
    mapping = match_labels(pred, true)
    assert len(set(mapping.values())) == len(mapping)  # one-to-one
    relabelled = np.array([mapping.get(p, None) for p in pred.tolist()], dtype=object)
    assert accuracy == pytest.approx(np.mean(relabelled == true))


@PROPERTY_SETTINGS
@given(labelling_pairs(), st.permutations(range(5)), st.permutations(range(5)))
def test_segmentation_metrics_invariant_to_relabelling(pair, pred_perm, true_perm):
    pred, true = pair
    pred_renamed, true_renamed = np.array(pred_perm)[pred] + 100, np.array(true_perm)[true]
    assert best_matching_accuracy(pred_renamed, true_renamed) == pytest.approx(best_matching_accuracy(pred, true))
    assert adjusted_rand_index(pred_renamed, true_renamed) == pytest.approx(adjusted_rand_index(pred, true))
    assert best_matching_accuracy(pred_renamed, pred) == 1.0
    assert adjusted_rand_index(pred_renamed, pred) == 1.0


@pytest.mark.parametrize(
    "pred, true, expected",
    [
        ([0, 0, 1, 1], [1, 1, 0, 0], 1.0),
        ([0, 0, 1, 1], [0, 1, 0, 1], -0.5),
        ([0, 0, 1, 2], [0, 0, 1, 1], 4 / 7),
        ([0, 0, 0, 0], [0, 1, 2, 3], 0.0),
        ([0, 0, 0], [0, 0, 0], 1.0),
        ([0, 1, 2], [0, 1, 2], 1.0),
        ([7], [3], 1.0),
    ],
)
def test_ari_hand_computed(pred, true, expected):
    assert adjusted_rand_index(pred, true) == pytest.approx(expected)


def pair_counting_ari(pred, true):
    """Hubert-Arabie closed form from pair counts: ARI = 2(ad - bc) / ((a+b)(b+d) + (a+c)(c+d))."""
    i, j = np.triu_indices(len(pred), k=1)
    same_pred, same_true = pred[i] == pred[j], true[i] == true[j]
    a = np.sum(same_pred & same_true)
    b = np.sum(same_pred & ~same_true)
    c = np.sum(~same_pred & same_true)
    d = np.sum(~same_pred & ~same_true)
    denominator = (a + b) * (b + d) + (a + c) * (c + d)
    return 1.0 if denominator == 0 else 2.0 * (a * d - b * c) / denominator


@pytest.mark.parametrize("num_pred, num_true", [(2, 2), (3, 5), (8, 4), (1, 3)])
@pytest.mark.parametrize("size", [2, 10, 200])
def test_ari_matches_pair_counting_formula(num_pred, num_true, size):
    rng = np.random.default_rng(size + 100 * num_pred + 1000 * num_true)
    for _ in range(5):
        true = rng.integers(0, num_true, size)
        # Mix of agreement and noise, so the ARI spans small and large values.
        pred = np.where(rng.random(size) < rng.random(), true % num_pred, rng.integers(0, num_pred, size))
        assert adjusted_rand_index(pred, true) == pytest.approx(pair_counting_ari(pred, true), abs=1e-12)
        assert adjusted_rand_index(pred, true) == pytest.approx(adjusted_rand_index(true, pred), abs=1e-12)


def test_segmentation_metrics_accept_tensors_without_modifying_them():
    pred, true = torch.tensor([2, 2, 0, 0, 1]), np.array([0, 0, 1, 1, 1])
    pred_before, true_before = pred.clone(), true.copy()
    assert best_matching_accuracy(pred, true) == pytest.approx(0.8)
    assert match_labels(pred, true) == {0: 1, 2: 0}
    assert adjusted_rand_index(pred, torch.as_tensor(true)) == pytest.approx(pair_counting_ari(pred.numpy(), true))
    assert torch.equal(pred, pred_before) and np.array_equal(true, true_before)


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("metric", [hausdorff, ot_distance])
@pytest.mark.parametrize(
    "a, b, match",
    [
        (np.zeros((0, 2)), np.zeros((3, 2)), "a: the point set is empty"),
        (np.zeros((2, 2)), np.zeros((3, 3)), "dimensions differ"),
        (np.zeros((2, 2)), np.array([[0.0, np.nan]]), "b: .*NaN"),
        (np.array([[np.inf, 0.0]]), np.zeros((2, 2)), "a: .*infinite"),
        (np.zeros((2, 2, 2)), np.zeros((2, 2)), "a: expected a point set of shape"),
        (["x", "y"], np.zeros((2, 1)), "a: expected an array of real-valued points"),
    ],
)
def test_point_metrics_reject_bad_input(metric, a, b, match):
    with pytest.raises(ValueError, match=match):
        metric(a, b)


@pytest.mark.parametrize("metric", [best_matching_accuracy, adjusted_rand_index, match_labels])
@pytest.mark.parametrize(
    "pred, true, match",
    [
        ([], [], "pred: the labelling is empty"),
        ([0, 1], [0, 1, 1], "different lengths"),
        ([[0, 1]], [0, 1], "pred: expected a 1-D array"),
        ([0, 1], [[0], [1]], "true: expected a 1-D array"),
    ],
)
def test_segmentation_metrics_reject_bad_input(metric, pred, true, match):
    with pytest.raises(ValueError, match=match):
        metric(pred, true)
