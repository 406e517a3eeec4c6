"""Several processes, one run: who this process is, and the few collective steps nova itself needs.

nova does not implement data parallelism: torchrun (``torch.distributed.run``) starts the ranks,
accelerate sets up the process group, and the HF Trainer wraps the model (DDP, FSDP or DeepSpeed)
and shards the data. What is left for nova: every rank runs the same validation (so all fail or
none does), rank 0 alone writes the run directory (locks, config.yaml, data reports, checkpoints,
metrics, pipeline.json), and a few collectives keep the ranks in step: data is prepared by rank 0
first and read from the cache by the others, a stop requested on any rank stops all of them at
the same step, and an error found by rank 0 alone is raised on every rank.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from nova.errors import NovaError
from nova.lazy import require

T = TypeVar("T")
# Set by ``nova train`` in the ranks it launches: the parent already ran preflight and prints the plan.
LAUNCHED_ENV = "NOVA_LAUNCHED"


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run (one process: world 1, rank 0)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise NovaError(f"environment variable {name}={value!r} is not a number",
                        hint="it is set by torchrun / accelerate / SLURM; unset it to train in one process") from None


def current() -> Ranks:
    """From torchrun/accelerate (WORLD_SIZE, RANK, LOCAL_RANK) or a SLURM srun of several tasks."""
    world = _int_env("WORLD_SIZE")
    if world is not None:
        return Ranks(world, _int_env("RANK") or 0, _int_env("LOCAL_RANK") or 0)
    tasks = _int_env("SLURM_NTASKS")
    if tasks is not None and tasks > 1 and os.environ.get("MASTER_ADDR"):
        # srun starts every task itself; torch.distributed reads these names
        rank, local = _int_env("SLURM_PROCID") or 0, _int_env("SLURM_LOCALID") or 0
        os.environ.update(WORLD_SIZE=str(tasks), RANK=str(rank), LOCAL_RANK=str(local))
        os.environ.setdefault("MASTER_PORT", "29500")
        return Ranks(tasks, rank, local)
    return Ranks()


def init(ranks: Ranks, timeout_s: int) -> None:
    """Join the process group (gloo on CPU, nccl on GPUs) with a timeout on every collective, so a
    rank that dies ends the run instead of leaving the others waiting for ever."""
    if not ranks.distributed:
        return
    torch = require("torch")
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    accelerate = require("accelerate")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank)
    accelerate.PartialState(backend=backend, timeout=timedelta(seconds=timeout_s))


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        require("torch").distributed.barrier()


def any_rank(ranks: Ranks, flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any of them."""
    if not ranks.distributed:
        return flag
    torch = require("torch")
    device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def on_main(ranks: Ranks, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and give its result to every rank (it must pickle); a NovaError it
    raises is raised on every rank, with the same message."""
    if not ranks.distributed:
        return fn()
    torch = require("torch")
    box: list[Any] = [None]
    if ranks.main:
        try:
            box = [("ok", fn())]
        except NovaError as exc:
            box = [("error", (exc.message, exc.hint))]
    torch.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise NovaError(value[0], hint=value[1])
    return value


# What gloo and nccl say when the rank at the other end of a collective is gone (killed, node down)
PEER_LOST = ("connection reset by peer", "connection closed by peer", "broken pipe", "connection refused",
             "communicator was aborted", "remote process exited", "socket timeout", "timed out")


def peer_lost(exc: BaseException, ranks: Ranks, rerun_hint: str) -> NovaError | None:
    """The one-line error for a collective whose peer died (a rank killed, a node gone), or None when
    ``exc`` is something else. gloo notices a closed socket at once; a peer that hangs without closing
    it is caught by the collective timeout (distributed.timeout_s)."""
    if not ranks.distributed or isinstance(exc, NovaError):
        return None
    text = str(exc).lower()
    if type(exc).__name__ != "DistBackendError" and not any(s in text for s in PEER_LOST):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    why = first.split("] ", 1)[-1].split(". ", 1)[0]  # gloo: "[.../pair.cc:537] Read error ...: Connection reset"
    return NovaError(f"rank {ranks.rank} lost another rank of the run ({why}): a process or node died or was "
                     "killed; this node stopped", hint=f"to resume: {rerun_hint}")


_main_first_calls = itertools.count()  # every rank enters main_first in the same order: the same keys
WAIT_POLL_S = 0.5
WAIT_REPORT_S = 60.0


@contextmanager
def main_first(ranks: Ranks) -> Iterator[None]:
    """Rank 0 runs the block first (it fills the data cache: tokenization happens once per job), then
    the others (they read it).

    The others do not wait in a collective, which would time out after ``distributed.timeout_s``
    while rank 0 tokenizes a large dataset for hours: they poll a key in the process group's store
    (torchrun's rendezvous store), saying every minute that they are waiting. A rank 0 that dies
    takes the store's connection with it, so the wait ends there too.
    """
    if not ranks.distributed:
        yield
        return
    store = require("torch").distributed.distributed_c10d._get_default_store()
    key = f"nova/main_first/{next(_main_first_calls)}"
    if not ranks.main:
        wait_for_key(store, key, ranks, say=print)
    try:
        yield
    finally:
        if ranks.main:
            store.set(key, "done")


def wait_for_key(store: Any, key: str, ranks: Ranks, *, say: Callable[[str], None],
                 poll_s: float = WAIT_POLL_S, report_s: float = WAIT_REPORT_S) -> float:
    """Poll ``store`` until rank 0 sets ``key``; the first rank of each other node reports the wait
    (rank 0's own node shows rank 0's progress). Returns the seconds waited."""
    started = last = time.monotonic()
    while not store.check([key]):
        time.sleep(poll_s)
        now = time.monotonic()
        if now - last >= report_s and ranks.local_rank == 0:
            say(f"[rank {ranks.rank}] waiting for rank 0 to prepare the data (tokenized once for every rank): "
                f"{int(now - started)} s")
            last = now
    return time.monotonic() - started
