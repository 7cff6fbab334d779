"""Process groups and devices: one place that reads torchrun's environment, joins / leaves the group and
resolves `device="auto"`, for training, extraction and the CLI alike."""
from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..utils import SpkcausalError, UsageError


@dataclass
class DistInfo:
    """Rank layout read from torchrun's environment."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created: bool = False

    @property
    def is_main(self) -> bool:
        """True on rank 0."""
        return self.rank == 0


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """'auto' -> cuda:<local rank> when CUDA is available, else cpu; 'cuda' without CUDA is a UsageError."""
    if local_rank is None:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("device cuda was asked for but CUDA is not available")
        return torch.device("cuda", local_rank)
    try:
        return torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None


def init_distributed(device: str = "auto", timeout: float | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK / WORLD_SIZE / LOCAL_RANK); NCCL on CUDA, gloo on CPU.

    `timeout` (seconds) bounds every collective: a rank whose peer died or hangs fails after it instead of
    waiting for torch's default (30 min for gloo); None keeps the default."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dev = resolve_device(device, info.local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        kwargs = {} if timeout is None else {"timeout": datetime.timedelta(seconds=float(timeout))}
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", **kwargs)
        info.created = True
    return info


def teardown(info: DistInfo) -> None:
    """Leave the process group if `init_distributed` created it."""
    if info.created and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed(device: str = "auto", timeout: float | None = None) -> Iterator[DistInfo]:
    """`with distributed(device) as info:` joins torchrun's group (if any) and always leaves it."""
    info = init_distributed(device, timeout)
    try:
        yield info
    finally:
        teardown(info)


class PeerLostError(SpkcausalError):
    """A collective failed or timed out: another rank (node) died, hangs or is unreachable."""


def is_peer_failure(err: BaseException) -> bool:
    """Whether an exception is a failed / timed-out collective rather than an error of this rank's own work."""
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    text = str(err)
    return any(s in text for s in ("gloo", "NCCL", "Connection closed", "Connection reset", "Broken pipe",
                                   "Timed out", "timed out"))


def peer_lost(err: BaseException, rank: int, world: int, timeout: float | None) -> PeerLostError:
    """The clear message for a failed collective (the backend's own text kept at the end)."""
    text = " ".join(str(err).split())[:300]
    bound = f" or did not answer within {timeout:g} s (train.dist_timeout)" if timeout else ""
    return PeerLostError(f"rank {rank} of {world}: another rank or node died{bound}; restart every node with "
                         f"--resume to continue from the last checkpoint ({type(err).__name__}: {text})")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the current process group, (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
