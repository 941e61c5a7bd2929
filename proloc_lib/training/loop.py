"""Training and inference for the fusion model on stored embeddings.

Samples are images (each paired with its protein's sequence). Model selection follows the
configuration (validation loss, or training loss for the authors' setting); the test split is
never seen here: notebook 03 scores it once, at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import threading
import time
import warnings
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from proloc_lib.core.fileio import full_disk_as_error
from proloc_lib.core.progress import bar as progress_bar
from proloc_lib.core.runtime import torch_threads
from proloc_lib.features.store import STORE_DTYPE
from proloc_lib.training import capture, stacked
from proloc_lib.training.datasets import (
    FusionDataset,
    epoch_batches,
    features_on_device,
    inference_batches,
    pad_length,
)
from proloc_lib.training.losses import authors_loss, bce_focal_loss
from proloc_lib.training.model import FusionConfig, FusionModel
from proloc_lib.training.selection import KeepBest
from proloc_lib.training.settings import TrainConfig


class NaNLossError(FloatingPointError):
    pass


def build_model(cfg: TrainConfig, seq_dim: int, img_dim: int, n_labels: int) -> FusionModel:
    return FusionModel(FusionConfig(seq_dim=seq_dim, img_dim=img_dim, n_labels=n_labels, **cfg.model_switches()))


def loss_fn(cfg: TrainConfig, pm_index: int):
    if cfg.loss == "authors":
        return lambda logits, y: authors_loss(logits, y, pm_index, cfg.focal_gamma)
    return lambda logits, y: bce_focal_loss(logits, y, cfg.bce_weight, cfg.focal_weight, cfg.focal_gamma)


def _amp_dtype(cfg: TrainConfig, device: str):
    """bfloat16 where the GPU has it (A100/H100), float16 with loss scaling elsewhere (Colab's T4);
    None: full precision (CPU, or amp off)."""
    if not (cfg.amp and str(device).startswith("cuda")):
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _autocast(cfg: TrainConfig, device: str):
    dtype = _amp_dtype(cfg, device)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def evaluate_loss(model, batches, lossf, cfg, device) -> float:
    """Mean loss over ``batches``: (img, seq, mask, y) tuples (a loader, or gathered batches)."""
    model.eval()
    total, n = torch.zeros((), device=device), 0
    for img, seq, mask, y in batches:
        with _autocast(cfg, device):
            logits = model(img.to(device), seq.to(device), mask.to(device))
        total += lossf(logits.float(), y.to(device)) * len(y)
        n += len(y)
    return float(total) / max(n, 1)


def _schedule(opt, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    warm = max(1, int(cfg.warmup_frac * total_steps))

    def factor(step):
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total_steps - warm))))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


# -- resume keying -------------------------------------------------------------------------------
RESUME_FORMAT = 3   # 3: dropout from the run's own generator


def _frame_digest(ds: FusionDataset, targets: str) -> str:
    """Sample ids, sequence keys and targets, in order: what a run trains or validates on."""
    h = hashlib.sha256()
    h.update("\n".join(f"{a}:{b}" for a, b in zip(ds.samples["image_id"], ds.samples["seq_hash"])).encode())
    h.update(ds.targets(targets).numpy().tobytes())
    return h.hexdigest()[:16]


def run_key(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, seed: int, *,
            pad_to: int | None = None) -> dict:
    """Everything that determines a training run; a resume state must match it to be continued."""
    return {"format": RESUME_FORMAT, "config_hash": cfg.hash(), "seed": int(seed),
            "train": _frame_digest(train_ds, cfg.targets), "val": _frame_digest(val_ds, cfg.targets),
            "seq_store": train_ds.seq_store.meta.get("fingerprint_id"),
            "img_store": train_ds.img_store.meta.get("fingerprint_id"), "global_pad_to": pad_to}


def _set_aside(path: Path, why: str) -> Path:
    aside = path.with_name(f"{path.stem}.set-aside-{time.strftime('%Y%m%dT%H%M%S')}{path.suffix}")
    path.replace(aside)
    warnings.warn(f"{path}: {why}; not continued (set aside as {aside.name}); training starts afresh",
                  stacklevel=3)
    return aside


# -- the loop ------------------------------------------------------------------------------------
class _Run:
    """One run's model, optimiser, schedule, selection and random stream, stepped by :func:`_train_runs`.

    RNG scheme (the same for a run alone and beside others, lockstep or threads): the weights are
    drawn after ``torch.manual_seed(seed)``; the next draw of that stream seeds the run's own
    generator, and every dropout mask of the run comes from it (``FusionModel.use_generator``),
    so a run's masks depend only on its own steps. Shuffles use ``seed + epoch`` generators. The
    caller's global generator is left where it was.
    """

    def __init__(self, job: "TrainJob", labels, device, pad_to):
        cfg, seed, train_ds, val_ds = job.cfg, int(job.seed), job.train_ds, job.val_ds
        self.cfg, self.device, self.seed = cfg, device, seed
        if cfg.images_per_protein:
            train_ds = train_ds.subset(train_ds.samples.sample(frac=1.0, random_state=seed)
                                       .groupby("protein_id").head(cfg.images_per_protein).index)
        self.train_ds, self.val_ds = train_ds, val_ds
        cuda = torch.device(device).type == "cuda"
        cuda_devices = range(torch.cuda.device_count()) if cuda else []
        with torch.random.fork_rng(devices=cuda_devices):  # the caller's global stream stays where it was
            torch.manual_seed(seed)
            self.model = build_model(cfg, train_ds.seq_store.hidden_size, train_ds.img_store.hidden_size,
                                     len(labels)).to(device)
            dropout_seed = int(torch.randint(2 ** 62, (1,)))
        self.gen = torch.Generator(device=device).manual_seed(dropout_seed)
        self.model.use_generator(self.gen)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        self.opt = opt_cls(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                           **({"foreach": True} if cuda else {}))
        self.train_pad = pad_to if cfg.padding == "global" else pad_length(cfg, train_ds)
        self.val_pad = pad_to if cfg.padding == "global" else pad_length(cfg, val_ds)
        steps_per_epoch = len(epoch_batches(train_ds.seq_lengths, cfg, shuffle=True, seed=seed, pad_to=self.train_pad))
        self.total_steps = cfg.max_epochs * steps_per_epoch
        self.sched = _schedule(self.opt, cfg, self.total_steps)
        self.lossf = loss_fn(cfg, labels.index("plasma membrane") if "plasma membrane" in labels else len(labels) - 1)
        # float16 needs loss scaling against gradient underflow; bfloat16 and float32 do not
        self.scaler = torch.amp.GradScaler("cuda", enabled=_amp_dtype(cfg, device) == torch.float16)
        self.keep = KeepBest(patience=cfg.patience)
        self.state = {"epoch": 0, "history": [], "finished": False}
        self.key = run_key(train_ds, val_ds, cfg, seed, pad_to=pad_to)
        self.resume = Path(job.resume_dir) / "last_state.pt" if job.resume_dir else None
        self.stream = torch.cuda.Stream(device) if cuda else None
        self.feats = self.val_feats = None   # set by _train_runs
        if self.resume is not None and self.resume.exists():
            self._load_resume()

    def plan(self, epoch: int, val: bool = False):
        ds = self.val_ds if val else self.train_ds
        return epoch_batches(ds.seq_lengths, self.cfg, shuffle=not val, seed=self.seed + (0 if val else epoch),
                             pad_to=self.val_pad if val else self.train_pad)

    def _load_resume(self):
        try:
            saved = torch.load(self.resume, map_location=self.device, weights_only=True)
            key = json.loads(saved["run_key"])
        except Exception as exc:  # unreadable, or an older format without a key
            _set_aside(self.resume, f"unreadable or older resume state ({type(exc).__name__})")
            return
        if key != self.key:
            diff = sorted(k for k in set(key) | set(self.key) if key.get(k) != self.key.get(k))
            _set_aside(self.resume, f"resume state of another run (differs in {', '.join(diff)})")
            return
        self.model.load_state_dict(saved["model"])
        self.opt.load_state_dict(saved["optimizer"])
        self.sched.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        self.state = json.loads(saved["state_json"])
        self.keep.load_state_dict(self.state.pop("keep"), saved["best_model"])
        self.gen.set_state(saved["rng"].cpu())  # dropout continues as if never interrupted

    def save(self):
        if self.resume is None:
            return
        self.resume.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.resume.with_suffix(".tmp")
        try:
            with full_disk_as_error(f"the resume state {self.resume}"):
                torch.save({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                            "scheduler": self.sched.state_dict(), "best_model": self.keep.weights,
                            "state_json": json.dumps({**self.state, "keep": self.keep.state_dict()}),
                            "run_key": json.dumps(self.key), "rng": self.gen.get_state(),
                            "scaler": self.scaler.state_dict()}, tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)   # never leave a half-written state beside the good one
            raise
        tmp.replace(self.resume)

    def step(self, img, seq, mask, y):
        cfg = self.cfg
        with _autocast(cfg, self.device):
            logits = self.model(img, seq, mask)
        loss = self.lossf(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip, foreach=True)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        return loss.detach()

    def end_epoch(self, epoch: int, loss_sum, n: int, seconds: float, *, reuse: bool):
        """Validate, record, select, save; raises NaNLossError on a non-finite training loss."""
        train_loss = float(loss_sum) / max(n, 1)
        if not math.isfinite(train_loss):
            raise self.fail(epoch)
        val_b = (self.val_feats.batch(torch.as_tensor(i).to(self.device), w, reuse=reuse)
                 for i, w in self.plan(epoch, val=True))
        val = evaluate_loss(self.model, val_b, self.lossf, self.cfg, self.device)
        self.state["history"].append({"epoch": epoch, "train_loss": train_loss, "val_loss": val,
                                      "seconds": seconds, "samples_per_s": n / seconds})
        self.keep.update(self.model, val if self.cfg.select_on == "val_loss" else train_loss, epoch)
        self.state["epoch"] = epoch
        self.state["finished"] = self.keep.should_stop or epoch >= self.cfg.max_epochs
        self.save()

    def fail(self, epoch):
        self.keep.restore(self.model)
        self.model.use_generator(None)
        err = NaNLossError(f"non-finite training loss at epoch {epoch}; the best model so far is kept "
                           f"(epoch {self.keep.best_epoch or 'none'}). Lower the learning rate or check the inputs.")
        err.model, err.history = self.model, pd.DataFrame(self.state["history"])
        return err

    def result(self):
        if self.keep.weights is None:  # every epoch scored NaN: nothing trustworthy to return
            raise NaNLossError(f"no epoch reached a finite {self.cfg.select_on.replace('_', ' ')}; check the inputs")
        self.keep.restore(self.model)
        self.model.use_generator(None)
        hist = pd.DataFrame(self.state["history"])
        hist["best"] = hist["epoch"] == self.keep.best_epoch
        return self.model, hist


class _Stack:
    """Runs stepped as one model (``training.stacked``): the seeds of one configuration on the
    same data (``cfg.stack_seeds``), or one run alone whose step is compiled (``cfg.capture_step``).

    Built from its runs' current state (weights, optimiser, schedule; the dropout generators are
    the runs' own), stepped with one batch of all runs' batches side by side, and copied back into
    the runs after every epoch (:meth:`sync`): validation, selection, resume states and results
    stay the runs' own, in the format a run trained alone writes.
    """

    def __init__(self, runs: list[_Run], device: str):
        self.runs, self.cfg, self.device = runs, runs[0].cfg, device
        cfg, cuda = self.cfg, torch.device(device).type == "cuda"
        compiled = capture.capture_active(cfg, device)
        draws = stacked.SeedDraws([r.gen for r in runs])
        self.draws = capture.DrawAhead(draws) if compiled else draws
        self.model = stacked.stack_models([r.model for r in runs], self.draws)
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        # a compiled optimiser step reads a changing learning rate from a tensor (no recompiles)
        lr = torch.tensor(cfg.lr) if compiled and cfg.schedule != "constant" else cfg.lr
        self.opt = opt_cls(self.model.parameters(), lr=lr, weight_decay=cfg.weight_decay,
                           **({"foreach": True, "capturable": compiled} if cuda else {}))
        self.sched = _schedule(self.opt, cfg, runs[0].total_steps)
        self.sched.load_state_dict(runs[0].sched.state_dict())
        stacked.stack_optimizer_state(self.opt, self.model, [r.opt for r in runs], [r.model for r in runs])
        self.seed_losses = torch.func.vmap(runs[0].lossf)   # one loss per run, each over its own rows
        self.params = list(self.model.parameters())
        self.stream = runs[0].stream
        self.compiled = (capture.CompiledStep(self._forward, self._update, self.draws, params=self.params,
                                              device=device) if compiled else None)

    def _forward(self, img, seq, mask, y):
        with _autocast(self.cfg, self.device):
            logits = self.model(img, seq, mask)
        n = len(self.runs)
        return self.seed_losses(logits.float().view(n, -1, logits.shape[-1]), y.view(n, -1, y.shape[-1]))

    def _update(self):
        if self.cfg.grad_clip is not None:
            stacked.clip_per_seed(self.params, self.cfg.grad_clip, len(self.runs))
        self.opt.step()

    def step(self, img, seq, mask, y) -> torch.Tensor:
        """One step of every run (rows of run s: ``s*B .. s*B+B-1``); returns the S losses."""
        if self.compiled is not None:
            losses = self.compiled(img, seq, mask, y)
        else:
            self.opt.zero_grad(set_to_none=True)
            losses = self._forward(img, seq, mask, y)
            losses.sum().backward()   # run s's gradient is the gradient of its own loss
            self._update()
            losses = losses.detach()
        self.sched.step()
        return losses

    def sync(self) -> None:
        """Each run's weights, optimiser and schedule from the stack's (after every epoch)."""
        models, opts = [r.model for r in self.runs], [r.opt for r in self.runs]
        stacked.unstack_into(self.model, models)
        stacked.unstack_optimizer_state(self.opt, self.model, opts, models)
        state = self.sched.state_dict()
        state["_last_lr"] = [float(x) for x in state.get("_last_lr", [])]
        for r in self.runs:
            r.sched.load_state_dict(state)


def _asks_to_stack(r: _Run, device: str) -> bool:
    return bool(r.cfg.stack_seeds or capture.capture_active(r.cfg, device))


def _can_stack(r: _Run, device: str) -> bool:
    """Every batch of the same shape, and no float16 loss scaling (its skipped steps are per run)."""
    return r.train_pad is not None and not r.cfg.bucket_batches and _amp_dtype(r.cfg, device) != torch.float16


def _stacks(r: _Run, device: str) -> bool:
    """Whether ``r`` steps in a :class:`_Stack` (``stack_seeds``, ``capture_step``; where possible)."""
    return _asks_to_stack(r, device) and _can_stack(r, device)


def _stack_key(r: _Run, device: str):
    """Runs with the same key step as one stack; None: the run steps alone."""
    if not _stacks(r, device):
        return None
    if not r.cfg.stack_seeds:   # compiled alone
        return ("alone", id(r))
    return (r.cfg.hash(), id(r.train_ds), id(r.val_ds), r.state["epoch"])


def _units(runs: list[_Run], device: str, stacks: dict) -> list:
    """``runs`` as what steps together: :class:`_Stack` s (kept in ``stacks`` while their runs
    stay the same) and lone runs, in the order of their first run."""
    groups: dict = {}
    for r in runs:
        key = _stack_key(r, device)
        groups.setdefault(("lone", id(r)) if key is None else key, []).append(r)
    units, used = [], set()
    for key, members in groups.items():
        if key[0] == "lone":
            units.append(members[0])
            continue
        ids = tuple(id(r) for r in members)
        if ids not in stacks:   # new, or a run left it (early stopping): built from the runs' state
            stacks[ids] = _Stack(members, device)
        used.add(ids)
        units.append(stacks[ids])
    for ids in [k for k in stacks if k not in used]:
        del stacks[ids]
    return units


def _lockstep(runs: list[_Run], device: str, bar, *, reuse: bool, stop: threading.Event | None = None,
              concurrent: int = 1, threads=None):
    """Train ``runs`` epoch by epoch, step by step in turn (on CUDA each on its own stream); runs
    that stack (:func:`_stacks`) step as one :class:`_Stack`, their batches gathered side by side.

    ``concurrent``: how many such loops run at the same time (threads), for each run's share of
    the wall time in its history. Returns early when ``stop`` is set. ``threads``: a function
    giving this thread's intra-op threads, asked before every step.
    """
    first = min(r.state["epoch"] for r in runs) + 1
    stacks: dict = {}
    for epoch in range(first, max(r.cfg.max_epochs for r in runs) + 1):
        active = [r for r in runs if not r.state["finished"] and r.state["epoch"] < epoch <= r.cfg.max_epochs]
        if not active:
            return
        t0 = time.perf_counter()
        units = _units(active, device, stacks)
        plans = {id(r): [(torch.as_tensor(i).to(device, non_blocking=True), w) for i, w in r.plan(epoch)]
                 for r in active}
        sums = {id(r): torch.zeros((), device=device) for r in active}
        ns = {id(r): 0 for r in active}
        for u in units:
            u.model.train()
            if u.stream is not None:  # the index tensors were made on the default stream
                u.stream.wait_stream(torch.cuda.current_stream(device))
        for k in range(max(len(p) for p in plans.values())):
            if stop is not None and stop.is_set():
                return
            if threads is not None:
                torch.set_num_threads(threads())
            for u in units:
                members = u.runs if isinstance(u, _Stack) else [u]
                if k >= len(plans[id(members[0])]):
                    continue
                steps = [plans[id(r)][k] for r in members]
                width = steps[0][1]
                idx = steps[0][0] if len(steps) == 1 else torch.cat([i for i, _ in steps])
                with torch.cuda.stream(u.stream) if u.stream is not None else contextlib.nullcontext():
                    img, seq, mask, y = members[0].feats.batch(idx, width, reuse=reuse)
                    losses = u.step(img, seq, mask, y)
                    if isinstance(u, _Stack):
                        for s, (r, (i, _)) in enumerate(zip(members, steps)):
                            sums[id(r)] += losses[s] * len(i)
                    else:
                        sums[id(u)] += losses * len(idx)
                for r, (i, _) in zip(members, steps):
                    ns[id(r)] += len(i)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)
        for u in units:
            if isinstance(u, _Stack):
                u.sync()
        seconds = (time.perf_counter() - t0) / (len(active) * concurrent)  # each run's share of the wall time
        for r in active:
            r.end_epoch(epoch, sums[id(r)], ns[id(r)], seconds, reuse=reuse)
            bar.update(1)


def _workers(workers, device: str, n_runs: int) -> int:
    """Runs trained at once in threads: on the CPU as many as cores (up to the runs), since small
    models leave cores idle inside one run (2 cores, demo model: 1.3x); on CUDA one thread, the
    runs in lockstep on their own streams."""
    if workers != "auto":
        return max(1, min(int(workers), n_runs))
    if torch.device(device).type != "cpu":
        return 1
    return max(1, min(torch.get_num_threads(), n_runs))


class _Ticks:
    """A progress bar that also tells ``on_epoch`` of every finished epoch (a rank's progress file)."""

    def __init__(self, bar, on_epoch):
        self.bar, self.on_epoch = bar, on_epoch

    def update(self, n: int = 1):
        self.bar.update(n)
        self.on_epoch(n)


def _train_runs(runs: list[_Run], device: str, progress: bool, resident, workers="auto", on_epoch=None):
    """Train the runs (see :func:`train_jobs`) on features loaded once per dataset."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores (authors' amp off)
        torch.backends.cudnn.allow_tf32 = True
    todo = [r for r in runs if not r.state["finished"]]
    if not todo:
        return
    feats = {}
    for r in todo:  # loaded once, off the epoch clock
        # under CUDA autocast the model casts its inputs anyway: hand it the stored float16
        out = STORE_DTYPE if _amp_dtype(r.cfg, device) is not None else torch.float32
        for ds, attr in ((r.train_ds, "feats"), (r.val_ds, "val_feats")):
            key = (id(ds), r.cfg.targets, out)
            if key not in feats:
                feats[key] = features_on_device(ds, device, targets=r.cfg.targets, resident=resident, out_dtype=out)
            setattr(r, attr, feats[key])
    # what trains in one thread: a run, or the runs that step as one stack
    groups: dict = {}
    for r in todo:
        key = _stack_key(r, device)
        groups.setdefault(("lone", id(r)) if key is None else key, []).append(r)
    n_workers = _workers(workers, device, len(groups))
    total = sum(r.cfg.max_epochs - r.state["epoch"] for r in todo)
    with progress_bar(total=total, desc="epochs" if len(todo) == 1 else f"epochs ({len(todo)} runs)",
              disable=not progress) as bar:
        if on_epoch is not None:
            bar = _Ticks(bar, on_epoch)
        if n_workers == 1:
            # one step at a time on the CPU: the gather buffers can be reused
            _lockstep(todo, device, bar, reuse=torch.device(device).type == "cpu")
            return
        stop, cores, left, lock = threading.Event(), torch.get_num_threads(), [len(groups)], threading.Lock()
        # each thread's share of the cores, grown as runs finish (the last runs alone get them all)
        def share_of_cores():
            return max(1, cores // min(n_workers, max(1, left[0])))

        def work(group):
            try:
                with torch_threads(share_of_cores()):
                    _lockstep(group, device, bar, reuse=False, stop=stop, concurrent=n_workers, threads=share_of_cores)
            finally:
                with lock:
                    left[0] -= 1

        with ThreadPoolExecutor(n_workers, thread_name_prefix="proloc-train") as pool:
            futures = [pool.submit(work, g) for g in groups.values()]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    if f.done() and f.exception() is not None:
                        raise f.exception()
            except BaseException:  # a failed run or Ctrl-C: the others stop after their current step
                stop.set()
                raise


@dataclass(kw_only=True)
class TrainJob:
    """One training run for :func:`train_jobs`: a configuration, a seed and its data.

    ``resume_dir``: the run's keyed resume state (see :func:`train_fusion`); ``global_pad_to``:
    the padding width for ``padding="global"`` (default: the longest over train and val)."""
    train_ds: FusionDataset
    val_ds: FusionDataset
    cfg: TrainConfig
    seed: int = 0
    resume_dir: str | Path | None = None
    global_pad_to: int | None = None

    def __post_init__(self):
        # the sequence rows the configuration asks for (TrainConfig.end_token), whatever was passed
        self.train_ds, self.val_ds = self.train_ds.for_config(self.cfg), self.val_ds.for_config(self.cfg)


def train_jobs(jobs: list[TrainJob], labels: list[str], *, device: str = "cpu", progress: bool = True,
               resident="auto", workers="auto", on_epoch=None) -> list[tuple]:
    """Train several runs at once (any configurations, seeds and data): [(model, history)] in order.

    On the CPU the runs train in parallel threads (``workers``: "auto" = one per core, up to the
    runs), on CUDA in lockstep on their own streams, runs of one configuration and data together
    (the published loop stays at batch 2 per model). Each run draws only from its own random
    streams (``_Run``), so its result equals the same run trained alone; a test checks weights and
    losses. A failed run (NaNLossError) or an interrupt stops them all; every finished epoch is in
    the resume states. Runs whose configuration asks for it step as one stacked model
    (``stack_seeds``) or through a compiled step (``capture_step``): :class:`_Stack`.
    ``on_epoch(n)``: called after every finished epoch of any run (``distributed``'s progress).
    """
    runs = [_Run(j, labels, device, _global_pad(j.cfg, j.train_ds, j.val_ds, j.global_pad_to)) for j in jobs]
    for name in sorted({f"{r.cfg.hash()}" for r in runs if _asks_to_stack(r, device) and not _can_stack(r, device)}):
        warnings.warn(f"configuration {name}: stack_seeds / capture_step need batches of one shape (padding: split "
                      "or global, bucket_batches: false) and no float16 loss scaling; its runs step one by one",
                      stacklevel=2)
    if torch.device(device).type == "cuda" and workers in ("auto", 1):
        groups: dict[tuple, list[_Run]] = {}
        for j, r in zip(jobs, runs):   # features of one group at a time in device memory
            groups.setdefault((j.cfg.hash(), id(j.train_ds), id(j.val_ds)), []).append(r)
        for group in groups.values():
            _train_runs(group, device, progress, resident, workers=1, on_epoch=on_epoch)
    else:
        _train_runs(runs, device, progress, resident, workers, on_epoch=on_epoch)
    return [r.result() for r in runs]


def train_fusion_seeds(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, labels: list[str], *,
                       seeds, device: str = "cpu", progress: bool = True, resume_dir: str | Path | None = None,
                       global_pad_to: int | None = None, resident="auto", workers="auto") -> list[tuple]:
    """Several seeds of one configuration at once (:func:`train_jobs`): [(model, history)] in
    ``seeds`` order. ``resume_dir``: one keyed state per seed under ``seed-<s>/``."""
    seeds = [int(s) for s in seeds]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds repeat: {seeds}")
    jobs = [TrainJob(train_ds=train_ds, val_ds=val_ds, cfg=cfg, seed=s, global_pad_to=global_pad_to,
                     resume_dir=Path(resume_dir) / f"seed-{s}" if resume_dir else None) for s in seeds]
    return train_jobs(jobs, labels, device=device, progress=progress, resident=resident, workers=workers)


def _global_pad(cfg, train_ds, val_ds, global_pad_to):
    if cfg.padding != "global":
        return None
    return global_pad_to or pad_length(cfg, train_ds, all_splits=(val_ds,))


def train_fusion(train_ds: FusionDataset, val_ds: FusionDataset, cfg: TrainConfig, labels: list[str],
                 device: str = "cpu", seed: int = 0, progress: bool = True, resume_dir: str | Path | None = None,
                 *, global_pad_to: int | None = None, resident="auto"):
    """Train; keep the epoch best by ``cfg.select_on`` (``selection.KeepBest``); returns (model, history).

    Batches are gathered on the device from features loaded once (``resident="auto"``: when they
    fit in half the free device memory; else read from the stores). ``global_pad_to``: the
    longest sequence over all splits, for ``padding="global"`` (default: over train and val).
    With ``resume_dir``, the state after every epoch is saved there (weights-only torch format),
    keyed by everything that determines the run (:func:`run_key`): a matching state continues,
    a finished one (early-stopped or at max_epochs) is returned as it is, any other is set aside.
    A non-finite loss stops training with NaNLossError; the best model so far is kept on it.
    """
    job = TrainJob(train_ds=train_ds, val_ds=val_ds, cfg=cfg, seed=seed, resume_dir=resume_dir,
                   global_pad_to=global_pad_to)
    return train_jobs([job], labels, device=device, progress=progress, resident=resident)[0]


@torch.no_grad()
def predict_proba(model, ds: FusionDataset, device: str = "cpu", batch_size: int = 64,
                  pad_to: int | None = None) -> np.ndarray:
    """Probabilities in the dataset's row order."""
    model.eval()
    out = [torch.sigmoid(model(img.to(device), seq.to(device), mask.to(device))).cpu()
           for img, seq, mask in inference_batches(ds, batch_size, pad_to)]
    return torch.cat(out).numpy()
