"""Multi-instance protein level: attention finds the informative image of a bag."""
import numpy as np
import pandas as pd
import torch

from proloc_lib.data.labels import LABELS
from proloc_lib.training import mil


def make_bags(n, seed):
    rng = np.random.default_rng(seed)
    rows, feats = [], []
    for p in range(n):
        y = (rng.random(5) < 0.4).astype(int)
        k = int(rng.integers(0, 4))              # one informative image per protein
        for i in range(4):
            f = rng.normal(scale=1.0, size=8)
            f[:5] = rng.normal(scale=1.0, size=5)
            f[5] = 0.0
            if i == k:
                f[:5] = (y * 2 - 1) * 2.0        # the label, clearly
                f[5] = 3.0                       # and a flag saying "look at me"
            feats.append(f)
            rows.append({"protein_id": f"P{p}", **dict(zip(LABELS, y))})
    return pd.DataFrame(rows), np.array(feats, dtype=np.float32)


def test_attention_mil_learns_to_attend_to_the_informative_image():
    tr, ftr = make_bags(80, 0)
    va, fva = make_bags(30, 1)
    train, val = mil.bags(tr, ftr, LABELS), mil.bags(va, fva, LABELS)
    assert len(train[1]) == 80 and train[1][0].shape == (4, 8) and train[2].shape == (80, 5)
    model = mil.fit_mil(train, val, 5, epochs=12, lr=5e-3, seed=0)
    probs = mil.predict_bags(model, val)
    acc = ((probs >= 0.5) == val[2].numpy()).mean()
    assert acc > 0.9, acc
    with torch.no_grad():
        weights = [model(x)[1] for x in val[1]]
    flagged = [int(np.argmax(x[:, 5].numpy())) for x in val[1]]
    hit = np.mean([w[f] > 0.5 for w, f in zip(weights, flagged)])
    assert hit > 0.8, hit


def test_mil_fits_on_one_thread_with_the_same_weights():
    """fit_mil and predict_bags run on one torch thread (speed); the caller's setting is restored
    and the result is the same as with several threads."""
    tr, ftr = make_bags(20, 0)
    va, fva = make_bags(8, 1)
    train, val = mil.bags(tr, ftr, LABELS), mil.bags(va, fva, LABELS)
    before = torch.get_num_threads()
    probs = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            probs[n] = mil.predict_bags(mil.fit_mil(train, val, 5, epochs=3, seed=0), val)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(probs[1], probs[2])
