"""F1 against threshold: undefined where the label has no positive."""
import numpy as np

from proloc_lib.evaluation.metrics import f1_at_thresholds, full_report


def test_f1_at_thresholds_is_nan_for_a_label_without_positive():
    grid = np.array([0.1, 0.5, 0.9])
    p = np.array([0.05, 0.3, 0.6, 0.95])
    f1 = f1_at_thresholds(np.zeros(4, dtype=int), p, grid)
    assert f1.shape == (3,) and np.isnan(f1).all()            # not 1.0 where nothing is called (0.95 > 0.9)
    # the same undefined value the per-label report gives
    assert np.isnan(full_report(np.zeros((4, 1), dtype=int), p[:, None], 0.5, labels=["er"])["per_label"]["er"]["f1"])


def test_f1_at_thresholds_with_positives_is_hand_computed():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.6, 0.4, 0.1])
    # t=0.5: calls {0, 1}: tp 1, fp 1, fn 1 -> 2/4; t=0.3: calls {0,1,2}: tp 2, fp 1 -> 4/5; t=0.95: none -> 0
    np.testing.assert_allclose(f1_at_thresholds(y, p, [0.5, 0.3, 0.95]), [0.5, 0.8, 0.0])
