"""The fusion model: the padding mask is honoured, switches do what they say, and it learns."""
import pytest
import torch

from proloc_lib.features.batching import pad_batch
from proloc_lib.training.losses import bce_focal_loss, focal_loss
from proloc_lib.training.model import Attention, Dropout, FusionConfig, FusionModel


def small(**kw):
    torch.manual_seed(0)
    cfg = FusionConfig(seq_dim=12, img_dim=10, d_model=16, n_heads=2, n_blocks=2, dropout=0.0, **kw)
    return FusionModel(cfg).eval()


def batch():
    torch.manual_seed(1)
    seqs = [torch.randn(7, 12), torch.randn(3, 12)]
    seq, mask = pad_batch(seqs)
    return torch.randn(2, 5, 10), seq, mask


def test_padded_content_does_not_change_output_with_mask():
    model = small()
    img, seq, mask = batch()
    out1 = model(img, seq, mask)
    seq2 = seq.clone()
    seq2[~mask] = torch.randn(int((~mask).sum()), 12) * 100
    torch.testing.assert_close(model(img, seq2, mask), out1, rtol=0, atol=1e-6)
    # and equals the unpadded sample alone
    torch.testing.assert_close(model(img[1:], seq[1:, :3], mask[1:, :3]), out1[1:], rtol=0, atol=1e-5)


def test_mask_off_makes_output_depend_on_padding():
    model = small(apply_mask=False)
    img, seq, mask = batch()
    seq2 = seq.clone()
    seq2[~mask] = 5.0
    assert not torch.allclose(model(img, seq2, mask), model(img, seq, mask))


def test_reverse_direction_pools_only_real_residues():
    model = small(query="sequence")
    img, seq, mask = batch()
    seq2 = seq.clone()
    seq2[~mask] = 7.0
    torch.testing.assert_close(model(img, seq2, mask), model(img, seq, mask), rtol=0, atol=1e-6)


def test_shared_blocks_have_one_set_of_weights():
    shared, indep = small(share_blocks=True), small()
    n_shared = sum(p.numel() for p in shared.blocks.parameters())
    n_indep = sum(p.numel() for p in indep.blocks.parameters())
    assert len(shared.blocks) == 1 and len(shared._layers()) == 2
    assert n_indep == 2 * n_shared


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        FusionConfig(seq_dim=4, img_dim=4, d_model=10, n_heads=3)
    with pytest.raises(ValueError, match="query"):
        FusionConfig(seq_dim=4, img_dim=4, d_model=8, n_heads=2, query="text")


def test_focal_loss_downweights_easy_examples():
    logits = torch.tensor([[4.0, -4.0], [0.1, -0.1]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    fl = torch.stack([focal_loss(logits[i:i + 1], y[i:i + 1]) for i in range(2)])
    assert torch.isclose(focal_loss(logits, y, gamma=0.0), bce.mean())
    assert (fl / bce.mean(1))[0] < 0.01 < (fl / bce.mean(1))[1]
    assert torch.isclose(bce_focal_loss(logits, y, 1.0, 0.0), bce.mean())


def test_model_learns_a_learnable_signal_far_below_label_frequency():
    """Labels are a function of which 'motif' token is present in the sequence."""
    g = torch.Generator().manual_seed(0)
    n, L, n_lab = 96, 12, 5
    motifs = torch.randn(n_lab, 12, generator=g) * 3
    y = (torch.rand(n, n_lab, generator=g) < 0.4).float()
    seqs = []
    for i in range(n):
        length = int(torch.randint(4, L, (1,), generator=g))
        s = torch.randn(length, 12, generator=g) * 0.3
        for j in torch.nonzero(y[i]).flatten():
            s[int(torch.randint(0, length, (1,), generator=g))] += motifs[j]
        seqs.append(s)
    seq, mask = pad_batch(seqs)
    img = torch.randn(n, 4, 10, generator=g)
    torch.manual_seed(0)
    model = FusionModel(FusionConfig(seq_dim=12, img_dim=10, d_model=32, n_heads=4, n_blocks=1, dropout=0.0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = bce_focal_loss(model(img, seq, mask), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prior = y.mean(0, keepdim=True).clamp(1e-4, 1 - 1e-4).expand_as(y)
    freq_loss = bce_focal_loss(torch.logit(prior), y)
    assert loss.item() < 0.3 * freq_loss.item(), (loss.item(), freq_loss.item())


def test_attention_with_weight_dropout_is_multihead_attention_plus_dropout():
    """model.Attention's own training path (dropout on the weights from the run's generator) computes
    what nn.MultiheadAttention computes: with a keep-everything dropout it equals the parent's
    output, key-padding mask and averaged weights included; with p=0.5 about half the weights go."""
    torch.manual_seed(0)
    attn = Attention(16, 4, dropout=0.5, batch_first=True)
    q, kv = torch.randn(3, 7, 16), torch.randn(3, 9, 16)
    pad = torch.zeros(3, 9, dtype=torch.bool)
    pad[1, 5:] = True
    attn.eval()
    want, want_w = attn(q, kv, kv, key_padding_mask=pad, need_weights=True)
    attn.train()
    attn.dropout = 1e-12   # the training path, keeping every weight
    got, got_w = attn(q, kv, kv, key_padding_mask=pad, need_weights=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_w, want_w, rtol=1e-5, atol=1e-6)
    attn.dropout = 0.5
    attn.generator = torch.Generator().manual_seed(1)
    _, w = attn(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    kept = (w[~pad[:, None, None, :].expand_as(w)] > 0).float().mean()
    assert 0.4 < kept < 0.6
    attn.generator = torch.Generator().manual_seed(1)   # the same generator state: the same masks
    _, w2 = attn(q, kv, kv, key_padding_mask=pad, need_weights=True, average_attn_weights=False)
    assert torch.equal(w, w2)


def test_dropout_draws_from_its_generator_and_scales_what_it_keeps():
    drop = Dropout(0.25).train()
    x = torch.ones(2000)
    drop.generator = torch.Generator().manual_seed(3)
    a = drop(x)
    drop.generator = torch.Generator().manual_seed(3)
    assert torch.equal(a, drop(x))
    torch.testing.assert_close(a.unique(), torch.tensor([0.0, 1 / 0.75]))
    assert abs((a == 0).float().mean().item() - 0.25) < 0.04
    assert torch.equal(drop.eval()(x), x)
