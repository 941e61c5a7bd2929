"""Several seeds of one configuration as one model: every weight with a leading seed dimension.

The published loop steps batches of 2: on a GPU each step is hundreds of tiny kernels. Stacking
S runs of one configuration on the same data (only the seed differs) turns them into one model
whose every Linear / LayerNorm / attention weight is ``[S, ...]``, fed one batch of ``S x B``
samples (run s's batch in rows ``s*B .. s*B+B-1``): one batched matrix product per layer instead
of S. The forward is ``FusionModel``'s own (:func:`stack_models` swaps only its leaves), so the
switches of the published and the corrected model stay in one place.

Each run keeps what makes it that run: its initial weights (built alone, then stacked), its data
order (its own batches, gathered side by side), its dropout masks (:class:`SeedDraws`: run s's
rows from run s's generator, in the order and shapes it would draw alone), its optimiser state
(Adam and AdamW are element-wise, so one optimiser over stacked weights is S optimisers; gradient
clipping is per run: :func:`clip_per_seed`) and its loss (the sum of the per-run losses, whose
gradient with respect to run s's slice is run s's gradient). The result equals the runs trained
alone within float tolerance (``tests/training/test_stacked.py``).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from proloc_lib.training.model import Attention, DrawsMasks, FusionModel, MaskSource, dropout_keep, keep_from_uniform


class SeedDraws(MaskSource):
    """Dropout masks of S stacked runs: rows ``s*B .. s*B+B-1`` of every masked tensor from run s's
    generator, drawn with the shape run s draws alone, so each run's masks equal its masks alone."""

    def __init__(self, generators: list[torch.Generator]):
        self.generators = list(generators)

    def keep(self, like: torch.Tensor, p: float) -> torch.Tensor:
        if p >= 1:
            return torch.zeros_like(like)
        # each run's rows filled by its own generator as torch.rand fills them alone (same shape,
        # same stream); then one comparison for all: S + 2 kernels instead of 3 S and a concatenation
        u = torch.empty(like.shape, device=like.device)
        for part, g in zip(u.chunk(len(self.generators)), self.generators, strict=True):
            part.uniform_(generator=g)
        return keep_from_uniform(u, p, like.dtype)


def _per_seed(x: torch.Tensor, n_seeds: int) -> torch.Tensor:
    """[S*B, ..., D] -> [S, B*..., D]: each run's rows as one matrix."""
    return x.reshape(n_seeds, -1, x.shape[-1])


class StackedLinear(nn.Module):
    """S ``nn.Linear`` layers: ``weight`` [S, out, in], ``bias`` [S, out]; input rows grouped by run."""

    def __init__(self, layers: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))

    def forward(self, x):
        out = torch.baddbmm(self.bias.unsqueeze(1), _per_seed(x, self.weight.shape[0]), self.weight.transpose(1, 2))
        return out.reshape(*x.shape[:-1], self.weight.shape[1])


class StackedLayerNorm(nn.Module):
    """S ``nn.LayerNorm`` layers over the last dimension: ``weight``, ``bias`` [S, d]."""

    def __init__(self, layers: list[nn.LayerNorm]):
        super().__init__()
        self.eps = layers[0].eps
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in layers]))
        self.bias = nn.Parameter(torch.stack([m.bias.detach() for m in layers]))

    def forward(self, x):
        d = x.shape[-1]
        z = F.layer_norm(_per_seed(x, self.weight.shape[0]), (d,), eps=self.eps)
        return (z * self.weight.unsqueeze(1) + self.bias.unsqueeze(1)).reshape(x.shape)


class StackedAttention(nn.Module, DrawsMasks):
    """S ``model.Attention`` layers (the same parameter names, each with a leading seed dimension).

    The computation is ``Attention``'s own dropout path (projections, scaled scores, key padding
    mask, softmax, dropout on the weights from ``self.generator``, output projection), with
    stacked projections; without dropout it is the same path with the dropout left out.
    """

    def __init__(self, layers: list[Attention]):
        super().__init__()
        first = layers[0]
        self.num_heads, self.dropout, self.embed_dim = first.num_heads, first.dropout, first.embed_dim
        self.in_proj_weight = nn.Parameter(torch.stack([m.in_proj_weight.detach() for m in layers]))
        self.in_proj_bias = nn.Parameter(torch.stack([m.in_proj_bias.detach() for m in layers]))
        self.out_proj = StackedLinear([m.out_proj for m in layers])

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, average_attn_weights=True):
        (b, t, d), s, h = query.shape, key.shape[1], self.num_heads
        n = self.in_proj_weight.shape[0]

        def heads(x, part, length):
            w, bias = self.in_proj_weight[:, part * d:(part + 1) * d], self.in_proj_bias[:, part * d:(part + 1) * d]
            y = torch.baddbmm(bias.unsqueeze(1), _per_seed(x, n), w.transpose(1, 2))
            return y.view(b, length, h, d // h).transpose(1, 2)

        q, k, v = heads(query, 0, t), heads(key, 1, s), heads(value, 2, s)
        scores = (q * (d // h) ** -0.5) @ k.transpose(-2, -1)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        weights = scores.softmax(-1)
        if self.training and self.dropout > 0:
            weights = weights * dropout_keep(weights, self.dropout, self.generator)
        out = self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))
        if not need_weights:
            return out, None
        return out, weights.mean(1) if average_attn_weights else weights


_STACKED = ((Attention, StackedAttention), (nn.LayerNorm, StackedLayerNorm), (nn.Linear, StackedLinear))


def stack_models(models: list[FusionModel], draws: MaskSource | None = None) -> FusionModel:
    """One ``FusionModel`` whose leaves hold the S models' weights stacked (the same parameter
    names, each ``[S, ...]``); its input is S batches side by side (``[S*B, ...]``).

    ``draws``: where its dropout masks come from (:class:`SeedDraws` over the runs' generators).
    The models are left as they were; :func:`unstack_into` copies trained weights back.
    """
    if not models:
        raise ValueError("no models to stack")
    if len({repr(m.cfg) for m in models}) != 1:
        raise ValueError("only models of one configuration stack")
    # the copy shares no generator with the first model (and a CUDA generator need not be copyable)
    gens = {id(m.generator): None for m in models[0].modules() if isinstance(m, DrawsMasks) and m.generator is not None}
    out = copy.deepcopy(models[0], memo=gens)
    modules = [dict(m.named_modules()) for m in models]
    replaced: list[str] = []
    for name, module in list(out.named_modules()):
        if not name or any(name.startswith(r + ".") for r in replaced):
            continue
        for plain, stacked in _STACKED:
            if isinstance(module, plain):
                parent_name, _, attr = name.rpartition(".")
                setattr(out.get_submodule(parent_name), attr, stacked([mods[name] for mods in modules]))
                replaced.append(name)
                break
    alone = dict(models[0].named_parameters())
    shapes = {n: tuple(p.shape) for n, p in out.named_parameters()}
    if shapes != {n: (len(models), *p.shape) for n, p in alone.items()}:
        raise ValueError(f"stacking did not cover every parameter: {sorted(set(shapes) ^ set(alone))}")
    out.use_generator(draws)
    return out


@torch.no_grad()
def unstack_into(stacked: FusionModel, models: list[FusionModel]) -> None:
    """Copy each run's slice of the stacked weights into its own model (same names)."""
    for name, p in stacked.named_parameters():
        for s, m in enumerate(models):
            m.get_parameter(name).copy_(p[s])


def clip_per_seed(params: list[torch.Tensor], max_norm: float, n_seeds: int) -> torch.Tensor:
    """``clip_grad_norm_`` for each run of a stack: run s's gradients (slice s of every stacked
    parameter) scaled by ``min(1, max_norm / (its total norm + 1e-6))``. Returns the S norms."""
    grads = [p.grad for p in params if p.grad is not None]
    norms = torch.stack([g.reshape(n_seeds, -1).float().pow(2).sum(1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


def _named(model: nn.Module) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters())


def _step_device(opt: torch.optim.Optimizer, p: torch.Tensor):
    """Where Adam keeps its step count: beside the parameter when capturable or fused, else on the CPU."""
    group = opt.param_groups[0]
    return p.device if group.get("capturable") or group.get("fused") else torch.device("cpu")


@torch.no_grad()
def stack_optimizer_state(stacked_opt: torch.optim.Optimizer, stacked: FusionModel,
                          opts: list[torch.optim.Optimizer], models: list[FusionModel]) -> None:
    """Each run's optimiser state (a resumed run has some) stacked into the stacked optimiser's,
    and its learning rate (the runs of a stack share one schedule, at the same step)."""
    per_run = [_named(m) for m in models]
    for name, big in stacked.named_parameters():
        states = [o.state.get(named[name], {}) for o, named in zip(opts, per_run)]
        if not states[0]:
            continue
        stacked_opt.state[big] = {   # one step count: the runs of a stack step together
            key: (first.detach().clone().to(_step_device(stacked_opt, big)) if key == "step"
                  else torch.stack([st[key] for st in states]).to(big.device))
            for key, first in states[0].items()}
    for group, own in zip(stacked_opt.param_groups, opts[0].param_groups):
        group["lr"] = own["lr"] if not torch.is_tensor(group["lr"]) else group["lr"].fill_(own["lr"])


@torch.no_grad()
def unstack_optimizer_state(stacked_opt: torch.optim.Optimizer, stacked: FusionModel,
                            opts: list[torch.optim.Optimizer], models: list[FusionModel]) -> None:
    """The stacked optimiser's state split back into each run's optimiser (the inverse of
    :func:`stack_optimizer_state`): each run's saved state is then the one it has alone."""
    per_run = [_named(m) for m in models]
    lr = stacked_opt.param_groups[0]["lr"]
    lr = float(lr) if torch.is_tensor(lr) else lr
    for name, big in stacked.named_parameters():
        merged = stacked_opt.state.get(big)
        if not merged:
            continue
        for s, (o, named) in enumerate(zip(opts, per_run)):
            p = named[name]
            o.state[p] = {key: (value.detach().clone().to(_step_device(o, p)) if key == "step"
                                else value[s].detach().clone()) for key, value in merged.items()}
    for o in opts:
        for group in o.param_groups:
            group["lr"] = lr
