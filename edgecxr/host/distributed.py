"""Training on several processes: torchrun + DistributedDataParallel (host side, torch).

``edgecxr train`` stays a single process unless torchrun started it: torchrun sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for every worker, and ``session()``
then opens the process group (gloo on the CPU, nccl on CUDA GPUs) and hands the trainer a
``Dist`` object. Everything PyTorch already does is PyTorch's: ``DistributedSampler`` picks each
rank's disjoint share of a seeded permutation that changes every epoch (``set_epoch``),
``DistributedDataParallel`` averages the gradients, ``SyncBatchNorm`` is an option on GPUs.
What is ours is the run folder's contract:

- ``--batch-size`` stays the **global** batch (what one optimizer step sees); each of the N
  processes takes ``batch_size / N`` of it, so a recipe means the same on 1 or N processes.
- Validation is split across the ranks and the logits gathered in the original order, so every
  rank computes the same loss, AUC and early-stopping decision (rank 0's is also broadcast).
  Before it, every rank takes rank 0's batch-norm statistics (DDP keeps only the weights equal).
- Only rank 0 writes: config.json, history.csv, best.pt, last.pt, metrics.json and the plots;
  the others wait at a barrier. Other machines need the split file and the images at the same
  paths, never the run folder: the resume state is read by rank 0 and broadcast.
- Augmentation draws from a generator seeded with (seed, rank): deterministic, different per
  rank. last.pt keeps every rank's generator state, so ``--resume`` continues the same run and
  must be given the same world size (and ``--sync-bn`` setting).
- Failures are one line: a configuration that cannot work (more processes than training images,
  a global batch that does not split evenly, a mismatched resume) is refused before training; a
  rank that dies or hangs ends the others with an error that names the last good checkpoint
  (gloo: a dead peer resets its connection at once, a hung one hits ``--dist-timeout``; torchrun
  itself stops the survivors with SIGTERM, which is turned into the same line).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from edgecxr.shared.errors import EdgeCXRError
from edgecxr.shared.metrics import softmax_pos

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# test hooks: "RANK:EPOCH" kills that rank with SIGKILL when it starts that (1-based) epoch;
# any non-empty value of the second makes rank 0 write dist-samples.json (each rank's indices)
KILL_ENV = "EDGECXR_TEST_KILL_RANK"
RECORD_ENV = "EDGECXR_DIST_RECORD_SAMPLES"
DEFAULT_TIMEOUT_S = 600.0


def under_torchrun() -> bool:
    return all(k in os.environ for k in TORCHRUN_ENV)


class RankAgreedError(EdgeCXRError):
    """An error every rank raises alike (rank 0 decided it): only rank 0 prints it."""


class PeerFailure(EdgeCXRError):
    """Another process of the run died, hung, or torchrun stopped this one."""


@dataclass
class DistSettings:
    sync_bn: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S


class Dist:
    """This process's place in a torchrun job, and the few collective steps training needs."""

    def __init__(self, rank: int, world_size: int, local_rank: int, backend: str, settings: DistSettings):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend, self.settings = backend, settings
        self.is_main = rank == 0
        # where collective tensors must live: nccl moves CUDA tensors only
        self.comm_device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        self.out: Path | None = None
        self.last_saved_epoch: int | None = None
        self.epoch: int | None = None
        self._sampler = None
        self._seen: list[list[int]] = []

    # ---------------------------------------------------------------- records and checks
    def record(self, batch_size: int) -> dict[str, Any]:
        """What config.json and last.pt keep about the launch."""
        return {"world_size": self.world_size, "backend": self.backend, "sync_bn": self.settings.sync_bn,
                "global_batch_size": batch_size, "batch_per_process": batch_size // self.world_size,
                "timeout_s": self.settings.timeout_s}

    def check_plan(self, n_train: int, batch_size: int, split: str) -> int:
        """The per-process batch; refuses what cannot work (on every rank alike, before any training)."""
        w = self.world_size
        if n_train // w < 2:
            raise RankAgreedError(f"{w} processes need at least {2 * w} training images (2 each, for batch norm); "
                                  f"the training part has {n_train}: use fewer processes", split)
        if batch_size % w or batch_size // w < 2:
            raise RankAgreedError(f"--batch-size {batch_size} is the global batch and must split evenly into at "
                                  f"least 2 images for each of the {w} processes; use a multiple of {w}, "
                                  f"at least {2 * w}", split)
        return batch_size // w

    def check_resume(self, saved: dict[str, Any] | None, where: str | Path) -> None:
        check_resume_record(saved, self, where)

    # ---------------------------------------------------------------- collectives
    def barrier(self) -> None:
        dist.barrier()

    def broadcast(self, obj: Any) -> Any:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def sum(self, *vals: float) -> list[float]:
        t = torch.tensor(vals, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(t)
        return t.cpu().tolist()

    def run_on_main(self, fn: Callable[[], Any]) -> Any:
        """fn() on rank 0 only, its result (or its one-line error) on every rank."""
        res, failed = None, None
        if self.is_main:
            try:
                res = fn()
            except EdgeCXRError as e:
                failed = e
        res, msg = self.broadcast((res, None if failed is None else (e_msg(failed), failed.path)))
        if failed is not None:
            raise failed
        if msg is not None:
            raise RankAgreedError(msg[0], msg[1])
        return res

    # ---------------------------------------------------------------- training pieces
    def seed_rank(self, gen: torch.Generator, seed: int) -> None:
        """A deterministic stream per (seed, rank) for augmentation, dropout and mixup."""
        s = int(np.random.SeedSequence([seed, self.rank]).generate_state(1, dtype=np.uint64)[0] >> 1)
        gen.manual_seed(s)
        torch.manual_seed(s)
        np.random.seed(s % (2**32))

    def epoch_indices(self, n: int, seed: int, epoch: int) -> torch.Tensor:
        """This rank's disjoint share of the epoch's seeded permutation (DistributedSampler, drop_last:
        every rank takes the same number of steps; the few left over change from epoch to epoch)."""
        from torch.utils.data import DistributedSampler

        self.epoch = epoch
        _test_kill(self.rank, epoch)
        if self._sampler is None:
            self._sampler = DistributedSampler(range(n), num_replicas=self.world_size, rank=self.rank,
                                               shuffle=True, seed=seed, drop_last=True)
        self._sampler.set_epoch(epoch)
        idx = list(self._sampler)
        if os.environ.get(RECORD_ENV):
            self._seen.append(idx)
        return torch.tensor(idx, dtype=torch.long)

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """SyncBatchNorm (optional) and DistributedDataParallel around ``model`` (changed in place)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        if self.settings.sync_bn:
            if device.type != "cuda":
                raise RankAgreedError("--sync-bn needs CUDA GPUs: torch's SyncBatchNorm does not run on the CPU")
            _convert_bn_in_place(model)
        if device.type == "cuda":
            return DDP(model, device_ids=[device.index if device.index is not None else self.local_rank])
        return DDP(model)

    @torch.no_grad()
    def sync_buffers(self, *modules: nn.Module | None) -> None:
        """Rank 0's batch-norm statistics on every rank (DDP broadcasts them before each forward,
        then every rank updates its own copy)."""
        for m in modules:
            if m is None:
                continue
            for b in m.buffers():
                if b.device == self.comm_device or self.comm_device.type == "cpu":
                    dist.broadcast(b, src=0)
                else:  # e.g. AveragedModel's n_averaged stays on the CPU while nccl wants CUDA
                    t = b.to(self.comm_device)
                    dist.broadcast(t, src=0)
                    b.copy_(t)

    def predict(self, fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                cache: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """fn on this rank's share (every world_size-th image) of ``cache``, gathered in order."""
        logits, _ = fn(cache[self.rank::self.world_size])
        parts = self.gather(np.asarray(logits, dtype=np.float32))
        full = np.zeros((len(cache), 2), np.float32)
        for r, p in enumerate(parts):
            full[r::self.world_size] = p
        return full, softmax_pos(full)

    def agree(self, value: Any) -> Any:
        return self.broadcast(value)

    def last_record(self, gen: torch.Generator, batch_size: int, epoch: int) -> dict[str, Any]:
        """For last.pt: the launch and every rank's random state (a collective: every rank calls it)."""
        states = self.gather({"torch_gen": gen.get_state(), "torch": torch.get_rng_state(),
                              "numpy": np.random.get_state()})
        seen = self.gather(self._seen[-1] if self._seen else None) if os.environ.get(RECORD_ENV) else None
        if self.is_main and seen is not None and self.out is not None:
            _record_samples(self.out, epoch, seen)
        self.last_saved_epoch = epoch + 1
        return {**self.record(batch_size), "rng": states}

    def restore_rng(self, gen: torch.Generator, blob: dict[str, Any]) -> None:
        self.last_saved_epoch = int(blob["epoch"]) + 1
        st = blob["distributed"]["rng"][self.rank]
        gen.set_state(st["torch_gen"])
        torch.set_rng_state(st["torch"])
        np.random.set_state(st["numpy"])

    def main_only(self, log: Callable[..., Any]) -> Callable[..., Any]:
        return log if self.is_main else (lambda *a, **k: None)


def e_msg(e: EdgeCXRError) -> str:
    return e.message if isinstance(e.message, str) else str(e)


def check_resume_record(saved: dict[str, Any] | None, cur: Dist | None, where: str | Path) -> None:
    """What must match to resume: the world size (each rank's random stream and share of the global
    batch are in last.pt) and --sync-bn. A single-process run is world size 1 without torchrun."""
    was = int(saved["world_size"]) if saved else 1
    now = cur.world_size if cur else 1
    hint = "start it with the same torchrun command" if saved else "start it without torchrun"
    if saved and cur is None:
        raise EdgeCXRError(f"this run was trained by {was} processes under torchrun; resume it with torchrun "
                           f"and WORLD_SIZE {was} (e.g. --nproc_per_node={was}); nothing was changed", where)
    if cur is not None and (saved is None or was != now):
        raise RankAgreedError(f"this run was trained by {was} process{'es' if was > 1 else ''}"
                              f"{' under torchrun' if saved else ' without torchrun'}, not {now}: "
                              f"{hint} (world size {was}) to resume it; nothing was changed", where)
    if cur is not None and saved and bool(saved.get("sync_bn")) != cur.settings.sync_bn:
        flag = "--sync-bn" if saved.get("sync_bn") else "no --sync-bn"
        raise RankAgreedError(f"this run was trained with {flag}; resume it the same way; nothing was changed", where)


def _record_samples(out: Path, epoch: int, seen: list[Any]) -> None:
    import json

    from edgecxr.shared.fsutil import atomic_write_json

    p = out / "dist-samples.json"
    rec = json.loads(p.read_text()) if p.exists() else {"note": "training sample indices per rank and epoch "
                                                                 f"({RECORD_ENV} debug record)", "epochs": {}}
    rec["epochs"][str(epoch + 1)] = {str(r): s for r, s in enumerate(seen)}
    atomic_write_json(p, rec, indent=None)


def _test_kill(rank: int, epoch: int) -> None:
    spec = os.environ.get(KILL_ENV, "")
    if spec:
        r, e = (int(v) for v in spec.split(":"))
        if r == rank and e == epoch + 1:
            os.kill(os.getpid(), signal.SIGKILL)


def _convert_bn_in_place(model: nn.Module) -> None:
    conv = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert conv is model  # the root is a MobileNetV2, not a batch norm: children were replaced in place


def _is_comm_error(e: BaseException) -> bool:
    if isinstance(e, getattr(dist, "DistError", ())):
        return True
    s = str(e)
    return isinstance(e, RuntimeError) and any(k in s for k in ("gloo", "NCCL", "nccl", "c10d", "Connection reset",
                                                                 "Connection closed", "Timed out", "timed out"))


def _peer_failure(ctx: Dist, why: str) -> PeerFailure:
    where = ctx.out
    if ctx.last_saved_epoch:
        keep = f"last.pt keeps epoch {ctx.last_saved_epoch} (the last one every rank finished)"
    else:
        keep = "no epoch of this run had finished, so no checkpoint was written"
    at = f" during epoch {ctx.epoch + 1}" if ctx.epoch is not None else ""
    return PeerFailure(f"rank {ctx.rank}: {why}{at}; {keep}; fix the cause and run the same torchrun "
                       "command with --resume", where)


def resolve_backend(device: str) -> str:
    name = (device or "auto").lower()
    if name == "cuda" and not torch.cuda.is_available():
        raise EdgeCXRError("--device cuda: no CUDA GPU is visible to torch on this machine")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    return "nccl" if use_cuda else "gloo"


@contextlib.contextmanager
def session(device: str = "auto", sync_bn: bool = False,
            timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[Dist | None]:
    """None outside torchrun (the single-process path, untouched); under torchrun the process group,
    open for the block, with collective failures and torchrun's SIGTERM turned into one line."""
    if not under_torchrun():
        if sync_bn:
            raise EdgeCXRError("--sync-bn applies to several processes: start the run with torchrun "
                               "(see README, 'Training on several processes')")
        yield None
        return
    if timeout_s <= 0:
        raise EdgeCXRError(f"--dist-timeout must be positive, not {timeout_s}")
    backend = resolve_backend(device)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    kw: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(local)
        kw["device_id"] = torch.device("cuda", local)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kw)
    ctx = Dist(rank, world, local, backend, DistSettings(sync_bn=sync_bn, timeout_s=timeout_s))

    def on_term(signum, frame):
        raise _peer_failure(ctx, "stopped by torchrun (SIGTERM), which does so when another process of the run fails")

    old = signal.signal(signal.SIGTERM, on_term)
    ok, failed = False, False
    try:
        yield ctx
        ok = True
    except PeerFailure:
        failed = True
        raise
    except RankAgreedError as e:
        if not ctx.is_main:  # rank 0 prints it
            sys.exit(e.exit_code)
        raise
    except EdgeCXRError as e:
        if not ctx.is_main:
            raise EdgeCXRError(f"rank {ctx.rank}: {e_msg(e)}", e.path) from None
        raise
    except Exception as e:
        if _is_comm_error(e):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            first = first.split("] ", 1)[-1].split(". ", 1)[0][:160]
            failed = True
            raise _peer_failure(ctx, f"another process of the run died or hung ({backend}: {first})") from None
        raise
    finally:
        # after a peer failure torchrun's SIGTERM to the survivors is expected: let them exit with their line
        signal.signal(signal.SIGTERM, signal.SIG_IGN if failed else old)
        if ok:
            dist.destroy_process_group()
