"""One training run on several processes: the process group from ``torchrun``'s environment, and its collectives.

``torchrun --nproc-per-node N run_episode.py train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`from_env` joins them into one
``torch.distributed`` process group (backend ``gloo`` for CPU tensors, ``nccl`` for CUDA tensors: the backend
follows the device). A process started without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) gets
:data:`SINGLE`, which runs every collective as the identity, so the training code has one path.

Every collective goes through :meth:`Distributed.collective`, which turns the backend's errors (a peer closed
its connection, a collective timed out) into a :class:`DistributedError` naming the rank, the operation and the
fix. The group's timeout (``FEWSHOT_DIST_TIMEOUT_S``, default 300 s) bounds every wait, so a rank that dies or
hangs makes the others stop with that error instead of waiting forever. See docs/distributed.md.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from fewshot.errors import FewshotError

__all__ = ["SINGLE", "Distributed", "DistributedError", "backend_for", "from_env", "timeout_seconds", "to_device"]

T = TypeVar("T")

#: Seconds a collective (or joining the group) may wait for the other ranks before :class:`DistributedError`.
DEFAULT_TIMEOUT_S = 300.0
_ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(FewshotError, RuntimeError):
    """The ranks of a distributed run could not start together, or a rank stopped answering during the run."""


def timeout_seconds() -> float:
    """The collective timeout: ``$FEWSHOT_DIST_TIMEOUT_S`` seconds, else :data:`DEFAULT_TIMEOUT_S`."""
    raw = os.environ.get("FEWSHOT_DIST_TIMEOUT_S")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise DistributedError(f"FEWSHOT_DIST_TIMEOUT_S must be a number of seconds > 0, got {raw!r}")
    return value


def backend_for(device: torch.device | str) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` for everything else (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@dataclass(frozen=True)
class Distributed:
    """This process's place in the run: ``rank`` of ``world_size`` processes, on ``device``, with ``backend``.

    ``world_size == 1`` (:data:`SINGLE`) needs no process group: every collective returns its input.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and the run folder and holds the run lock."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether there is more than one process (collectives communicate)."""
        return self.world_size > 1

    def collective(self, what: str, fn: Callable[[], T]) -> T:
        """Run the collective ``fn`` (named ``what`` in errors); backend failures become :class:`DistributedError`."""
        try:
            return fn()
        except DistributedError:
            raise
        except (RuntimeError, OSError, ValueError) as exc:  # gloo/nccl raise RuntimeError subclasses
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} failed ({type(exc).__name__}: {exc}); another rank "
                f"probably stopped (crashed, was killed or ran out of memory) or did not answer within "
                f"{timeout_seconds():g} s (FEWSHOT_DIST_TIMEOUT_S). Look for the first error in the other ranks' "
                "output; the run can be resumed from checkpoints/last.pt on any number of ranks"
            ) from exc

    # ------------------------------------------------------------------------------------- collectives
    def all_reduce_sum_(self, tensor: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
        """Sum ``tensor`` over the ranks in place (identity on one process); returns it."""
        if self.active:
            self.collective(what, lambda: dist.all_reduce(tensor, op=dist.ReduceOp.SUM))
        return tensor

    def all_gather(self, tensor: torch.Tensor, what: str = "all_gather") -> list[torch.Tensor]:
        """``[tensor of rank 0, ..., tensor of rank W-1]`` (every rank's tensor must have the same shape)."""
        if not self.active:
            return [tensor]
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        self.collective(what, lambda: dist.all_gather(out, tensor.contiguous()))
        return out

    def broadcast_object(self, value: Any, what: str = "broadcast") -> Any:
        """Rank 0's ``value`` on every rank (a small picklable object: a path, a flag)."""
        if not self.active:
            return value
        box = [value if self.is_main else None]
        self.collective(what, lambda: dist.broadcast_object_list(box, src=0, device=self._object_device()))
        return box[0]

    def barrier(self, what: str = "barrier") -> None:
        """Wait until every rank arrives here (bounded by the timeout)."""
        if self.active:
            self.collective(what, lambda: dist.monitored_barrier(timeout=timedelta(seconds=timeout_seconds()))
                            if self.backend == "gloo" else dist.barrier())  # fmt: skip

    def _object_device(self) -> torch.device | None:
        return self.device if self.backend == "nccl" else None

    def describe(self) -> dict[str, Any]:
        """``{"world_size", "backend"}`` (``backend`` None on one process), as recorded in ``env.json``."""
        return {"world_size": self.world_size, "backend": self.backend}


#: The single-process run: no process group, every collective is the identity.
SINGLE = Distributed()


def _env_int(name: str) -> int:
    raw = os.environ.get(name)
    try:
        return int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DistributedError(
            f"WORLD_SIZE is set, so this looks like a torchrun launch, but {name}={raw!r} is not an integer; start "
            "the ranks with `torchrun --nproc-per-node N run_episode.py ...` (it sets RANK, WORLD_SIZE, LOCAL_RANK, "
            "MASTER_ADDR and MASTER_PORT) or unset WORLD_SIZE for one process"
        ) from None


def from_env(device: torch.device | str | None = None) -> Distributed:
    """Join the process group ``torchrun`` describes in the environment, or :data:`SINGLE` without one.

    Args:
        device: where the model lives (``cpu``, ``cuda``); picks the backend. A CUDA device gets the rank's local
            GPU (``cuda:LOCAL_RANK``). ``None``: the CPU for the backend, and callers leave the model where it is.

    Returns:
        This process's :class:`Distributed` (one process: :data:`SINGLE`, or one carrying ``device``). Calling it
        again in the same process returns the same group.

    Raises:
        DistributedError: an incomplete or inconsistent environment (e.g. ``RANK`` missing or ``RANK >=
            WORLD_SIZE``), or the other ranks did not join within the timeout.
    """
    if os.environ.get("WORLD_SIZE") in (None, "", "1"):
        return SINGLE if device is None else Distributed(device=torch.device(device))
    missing = [k for k in _ENV_KEYS if not os.environ.get(k)]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not; launch with `torchrun --nproc-per-node N "
            "run_episode.py ...` (multi-node: add --nnodes, --node-rank, --master-addr, --master-port) or set all "
            "of RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"
        )
    rank, world, local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    if world < 1 or not 0 <= rank < world:
        raise DistributedError(f"RANK must lie in 0..WORLD_SIZE-1, got RANK={rank}, WORLD_SIZE={world}")
    dev = torch.device(device if device is not None else "cpu")
    if dev.type == "cuda":
        if not torch.cuda.is_available() or local >= torch.cuda.device_count():
            raise DistributedError(
                f"rank {rank} (LOCAL_RANK={local}) needs a CUDA device but this machine has "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}; start at most that many ranks per "
                "node (--nproc-per-node) or train on the CPU"
            )
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    backend = backend_for(dev)
    if not dist.is_initialized():
        try:
            dist.init_process_group(
                backend, init_method="env://", rank=rank, world_size=world,
                timeout=timedelta(seconds=timeout_seconds()),
            )  # fmt: skip
        except (RuntimeError, OSError, ValueError) as exc:
            raise DistributedError(
                f"rank {rank} of {world} could not join the process group at {os.environ['MASTER_ADDR']}:"
                f"{os.environ['MASTER_PORT']} with backend {backend!r} ({type(exc).__name__}: {exc}); check that "
                "every rank was started with the same MASTER_ADDR/MASTER_PORT and WORLD_SIZE and that the port is "
                "reachable"
            ) from exc
    elif dist.get_world_size() != world or dist.get_rank() != rank:
        raise DistributedError(
            f"a process group of {dist.get_world_size()} ranks (this rank {dist.get_rank()}) is already "
            f"initialized but the environment says RANK={rank}, WORLD_SIZE={world}"
        )
    return Distributed(rank=rank, world_size=world, local_rank=local, backend=backend, device=dev)


def to_device(episode: Any, device: torch.device) -> Any:
    """``episode`` (an ``episodes.episode.Episode``) with its tensors on the rank's ``device`` (itself on the CPU)."""
    if device.type == "cpu":
        return episode
    tensors = ("support_x", "support_y", "query_x", "query_y")
    return dataclasses.replace(episode, **{k: getattr(episode, k).to(device) for k in tensors})


def shutdown(ctx: Distributed) -> None:
    """Leave the process group (nothing on one process)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
