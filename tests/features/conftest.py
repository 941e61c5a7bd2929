"""What the feature tests share: a deterministic stand-in sequence encoder, random sequences, a
store's contents as a dict."""
import numpy as np
import pytest
import torch


class CountingEncoder:
    """A deterministic stand-in encoder: embedding of residue i depends on the residue and i."""

    hidden_size = 8

    def __init__(self, fail_after=None, tag="v1"):
        self.calls, self.seen, self.fail_after, self.tag = 0, [], fail_after, tag

    def fingerprint(self):
        return {"model_id": "counting", "tag": self.tag}

    def embed_batch(self, seqs, *, end_token=False):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.seen += list(seqs)
        out = []
        for s in seqs:
            codes = torch.tensor([ord(c) for c in s], dtype=torch.float32)
            pos = torch.arange(len(s), dtype=torch.float32)
            rows = torch.stack([codes / 100 + k * pos / 50 for k in range(self.hidden_size)], 1)
            # the </s> row: -(length) in every column, told apart from any residue row
            out.append(torch.cat([rows, torch.full((1, self.hidden_size), -float(len(s)))]) if end_token else rows)
        return out


def _random_sequences(n=40, seed=0):
    rng = np.random.default_rng(seed)
    aa = list("ACDEFGHIKLMNPQRSTVWY")
    return [("".join(rng.choice(aa, size=int(rng.integers(5, 120))))) for _ in range(n)]


def _store_contents(store):
    # clones: tensors read from a shard may map the file itself, and some tests damage files
    return {k: store.get(k).clone() for k in sorted(store.keys())}


@pytest.fixture
def counting_encoder():
    """The class CountingEncoder(fail_after=None, tag="v1"): it records every sequence it embeds
    (.seen, .calls), raises KeyboardInterrupt after `fail_after` batches, and `tag` enters its
    fingerprint."""
    return CountingEncoder


@pytest.fixture
def random_sequences():
    """Factory (n=40, seed=0): n seeded random protein sequences of 5-119 residues."""
    return _random_sequences


@pytest.fixture
def store_contents():
    """Function: an EmbeddingStore's items as {key: tensor}, sorted by key."""
    return _store_contents
