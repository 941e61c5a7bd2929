"""Training runs spread over processes, one device each: notebook 03's runs on every GPU of a node.

The design, the simplest that gives the outputs of one process: the notebook stays one process
(papermill) that reads the data, scores every run and writes the stage; only the training of a
``train_jobs`` call is spread. :func:`train_jobs` with ``ranks=N`` writes the jobs (samples,
store paths, configurations, seeds, resume folders) into a temporary folder and starts N
processes (``torch.multiprocessing``, spawned) that join one ``torch.distributed`` group (NCCL on
GPUs, gloo on the CPU; the rendezvous is a file in that folder, no network port). Rank r trains
its share (:func:`shares`: runs dealt longest first to the least loaded rank) on ``cuda:r``
through the one-process ``loop.train_jobs`` (stacked seeds and captured steps included), and
writes each run's selected weights and history into the folder, each file written whole. The
parent reads them back into models: the objects a one-process call returns, so predictions,
metrics and checkpoints are computed exactly as without ranks. A run's result does not depend on
what trains beside it (``loop``), so it is the same on any rank: bit for bit at equal CPU thread
counts, except that seeds stacked together (``stack_seeds``) agree within float tolerance when
ranks split a stack differently.

A rank that fails writes its error in one line and exits; ``torch.multiprocessing`` then stops the
other ranks and the parent raises that line (``RankFailed``; a NaN loss stays ``NaNLossError``).
Every run keeps its own per-epoch resume state (``TrainJob.resume_dir``) whichever rank trains
it, so an interrupted call, rerun, continues each run where it stopped.

``torchrun --nproc_per_node N -m proloc_lib run ...`` comes here too: the command line lets rank
0 run the notebooks with N training ranks and the other ranks end at once (``cli.run``).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import tempfile
from pathlib import Path

import pandas as pd
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from proloc_lib.core.errors import RunFailed, one_line
from proloc_lib.core.fileio import full_disk_as_error
from proloc_lib.core.progress import bar as progress_bar
from proloc_lib.core.runtime import check_ranks
from proloc_lib.features.store import EmbeddingStore
from proloc_lib.training import loop
from proloc_lib.training.datasets import FusionDataset
from proloc_lib.training.settings import TrainConfig, train_config_dict

SPEC, RENDEZVOUS = "jobs.pkl", "rendezvous"


class RankFailed(RunFailed):
    pass


def job_cost(job: loop.TrainJob) -> float:
    """A run's training work, roughly: epochs x samples x padded residues per sample."""
    lengths = job.train_ds.seq_lengths
    width = float(lengths.max()) if job.cfg.padding != "batch" else float(lengths.mean())
    return job.cfg.max_epochs * len(lengths) * max(width, 1.0)


def shares(costs: list[float], ranks: int) -> list[int]:
    """The rank of each run: dealt in order of cost, largest first, each to the least loaded rank
    (ties: the lower rank; equal costs: the earlier run first). Deterministic."""
    load = [0.0] * ranks
    out = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(ranks), key=lambda k: (load[k], k))
        out[i] = r
        load[r] += costs[i]
    return out


def _spec(jobs: list[loop.TrainJob], labels: list[str], *, device: str, ranks: int, threads: int,
          resident, workers) -> dict:
    """Everything a rank needs, picklable: each dataset once (samples and store paths)."""
    sets, ref = [], {}

    def ref_of(ds: FusionDataset) -> int:
        if id(ds) not in ref:
            ref[id(ds)] = len(sets)
            sets.append({"samples": ds.samples, "labels": list(ds.labels), "seq_store": str(ds.seq_store.path),
                         "img_store": str(ds.img_store.path), "end_token": ds.end_token})
        return ref[id(ds)]

    return {"labels": list(labels), "device": device, "threads": threads, "resident": resident, "workers": workers,
            "jobs": [{"train": ref_of(j.train_ds), "val": ref_of(j.val_ds), "cfg": train_config_dict(j.cfg),
                      "seed": int(j.seed), "resume_dir": str(j.resume_dir) if j.resume_dir else None,
                      "global_pad_to": j.global_pad_to} for j in jobs],
            "datasets": sets, "rank_of": shares([job_cost(j) for j in jobs], ranks)}


def _jobs_of(spec: dict, rank: int) -> tuple[list[int], list[loop.TrainJob]]:
    """This rank's runs (their indices in the call) with their datasets rebuilt once each."""
    stores: dict[str, EmbeddingStore] = {}
    built: dict[int, FusionDataset] = {}

    def store(path: str) -> EmbeddingStore:
        if path not in stores:
            stores[path] = EmbeddingStore(path)
        return stores[path]

    def dataset(i: int) -> FusionDataset:
        if i not in built:
            d = spec["datasets"][i]
            built[i] = FusionDataset(d["samples"], d["labels"], store(d["seq_store"]), store(d["img_store"]),
                                     end_token=d["end_token"])
        return built[i]

    mine = [i for i, r in enumerate(spec["rank_of"]) if r == rank]
    jobs = []
    for i in mine:
        j = spec["jobs"][i]
        jobs.append(loop.TrainJob(train_ds=dataset(j["train"]), val_ds=dataset(j["val"]),
                                  cfg=TrainConfig.from_dict(j["cfg"]), seed=j["seed"],
                                  resume_dir=j["resume_dir"], global_pad_to=j["global_pad_to"]))
    return mine, jobs


def _write_whole(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with full_disk_as_error(path):
            write(tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def _result_path(work: Path, i: int) -> Path:
    return work / f"result-{i}.pt"


def _rank_main(rank: int, work: str, world: int) -> None:
    """One rank: join the group, train this rank's share, write each run's result."""
    work = Path(work)
    spec = pickle.loads((work / SPEC).read_bytes())
    cuda = torch.device(spec["device"]).type == "cuda"
    device = f"cuda:{rank}" if cuda else "cpu"
    try:
        if cuda:
            torch.cuda.set_device(rank)
        torch.set_num_threads(spec["threads"])
        dist.init_process_group("nccl" if cuda else "gloo", init_method=(work / RENDEZVOUS).resolve().as_uri(),
                                rank=rank, world_size=world)
        names = [None] * world   # every rank is up before any trains; rank 0 notes who runs where
        dist.all_gather_object(names, torch.cuda.get_device_name(rank) if cuda else f"cpu ({spec['threads']} threads)")
        if rank == 0:
            _write_whole(work / "ranks.json", lambda p: p.write_text(json.dumps(names)))
        mine, jobs = _jobs_of(spec, rank)
        done = [0]

        def tick(n: int = 1):
            done[0] += n
            _write_whole(work / f"progress-{rank}", lambda p: p.write_text(str(done[0])))

        results = loop.train_jobs(jobs, spec["labels"], device=device, progress=False, resident=spec["resident"],
                                  workers=spec["workers"], on_epoch=tick) if jobs else []
        for i, (model, hist) in zip(mine, results):
            payload = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                       "training": model.training, "columns": list(hist.columns),
                       "history": json.dumps(hist.to_dict(orient="list"))}
            _write_whole(_result_path(work, i), lambda p: torch.save(payload, p))
        dist.destroy_process_group()
    except BaseException as exc:
        line = f"{type(exc).__name__}: {one_line(exc)}"
        _write_whole(work / f"error-{rank}", lambda p: p.write_text(line))
        raise


def _progress(work: Path, ranks: int) -> int:
    n = 0
    for r in range(ranks):
        try:
            n += int((work / f"progress-{r}").read_text() or 0)
        except (OSError, ValueError):
            pass
    return n


def _failure(work: Path, ranks: int, exc: BaseException) -> Exception:
    """The first failed rank's own line (the rank that stopped first, by its error file's time)."""
    errors = sorted((p.stat().st_mtime, int(p.name.split("-")[1]), p.read_text().strip())
                    for p in work.glob("error-*"))
    if errors:
        _, rank, line = errors[0]
    else:   # killed before it could say why (out of memory, a signal)
        rank, line = getattr(exc, "error_index", "?"), one_line(exc)
    kind, _, message = line.partition(": ")
    if kind == "NaNLossError":
        return loop.NaNLossError(f"training rank {rank} of {ranks}: {message}")
    return RankFailed(f"training rank {rank} of {ranks} failed: {line}")


def _read_result(path: Path, job: loop.TrainJob, labels: list[str], device: str):
    saved = torch.load(path, map_location="cpu", weights_only=True)
    with torch.random.fork_rng(devices=[]):   # building the model draws weights: leave the caller's stream alone
        model = loop.build_model(job.cfg, job.train_ds.seq_store.hidden_size, job.train_ds.img_store.hidden_size,
                                 len(labels))
    model.load_state_dict(saved["model"])
    model.train(saved["training"])
    hist = pd.DataFrame(json.loads(saved["history"]), columns=saved["columns"])
    return model.to(device), hist


def train_jobs(jobs: list[loop.TrainJob], labels: list[str], *, device: str = "cpu", progress: bool = True,
               ranks: int = 1, resident="auto", workers="auto",
               workdir: str | os.PathLike | None = None) -> list[tuple]:
    """``loop.train_jobs`` over ``ranks`` processes, one device each (``cuda:0`` .. ``cuda:N-1``; on
    the CPU each rank gets its share of the cores): [(model, history)] in order, models on ``device``.

    ``ranks`` 1 (or one run) trains here. ``workdir``: where the temporary exchange folder goes
    (default: the system's temporary folder)."""
    ranks = min(int(ranks), len(jobs))
    if ranks <= 1:
        return loop.train_jobs(jobs, labels, device=device, progress=progress, resident=resident, workers=workers)
    check_ranks(device, ranks)
    cuda = torch.device(device).type == "cuda"
    threads = max(1, torch.get_num_threads() // ranks)   # the host's cores shared among the ranks
    spec = _spec(jobs, labels, device=device, ranks=ranks, threads=threads, resident=resident, workers=workers)
    total = sum(j.cfg.max_epochs for j in jobs)
    with tempfile.TemporaryDirectory(prefix="proloc-ranks-", dir=workdir) as tmp:
        work = Path(tmp)
        _write_whole(work / SPEC, lambda p: p.write_bytes(pickle.dumps(spec)))
        if progress:
            print(f"== training {len(jobs)} runs on {ranks} ranks ({'cuda:0..' + str(ranks - 1) if cuda else 'cpu'}): "
                  + ", ".join(f"rank {r}: {spec['rank_of'].count(r)} runs" for r in range(ranks)), flush=True)
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        level = spawn_log.level
        spawn_log.setLevel(logging.ERROR)   # its "terminating process" notes: our one line says it
        ctx = mp.start_processes(_rank_main, args=(str(work), ranks), nprocs=ranks, join=False, start_method="spawn")
        try:
            with progress_bar(total=total, desc=f"epochs ({len(jobs)} runs, {ranks} ranks)",
                              disable=not progress) as bar:
                while not ctx.join(timeout=1.0, grace_period=5.0):
                    bar.update(_progress(work, ranks) - bar.n)
                bar.update(_progress(work, ranks) - bar.n)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            raise _failure(work, ranks, exc) from None
        finally:
            spawn_log.setLevel(level)
            for p in ctx.processes:   # interrupted here: no rank outlives the call
                if p.is_alive():
                    p.terminate()
                    p.join(5)
        missing = [i for i in range(len(jobs)) if not _result_path(work, i).exists()]
        if missing:
            raise RankFailed(f"training ranks ended without the results of runs {missing}")
        return [_read_result(_result_path(work, i), j, labels, device) for i, j in enumerate(jobs)]
