"""``nova train --nproc-per-node N``: start the ranks with torchrun's elastic launcher, and report for them.

The parent process runs preflight once, prints where the ranks run, and starts
``python -m torch.distributed.run ... -m nova train ...`` (torch's own launcher: rendezvous,
worker monitoring, signal forwarding). When one rank dies, torchrun stops the others; the parent
then says so in one line with the command that resumes. A rank's own error (a bad record, a
refused resume) or a clean stop (SIGTERM) is handed to the parent through a small JSON file, so
it is printed once, as in a single-process run, with the same exit code.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from nova.config.schema import DistributedConfig
from nova.errors import NovaError
from nova.train.machinery.distributed import LAUNCHED_ENV
from nova.train.torchrun import QUIET_ENV

RESULT_ENV = "NOVA_RESULT_FILE"
RERUN_ENV = "NOVA_RERUN_HINT"  # the launch command that resumes, for the ranks' own messages


@dataclass(frozen=True)
class Launch:
    """Where the ranks run: this node's share and the rendezvous."""

    nproc_per_node: int
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes

    def flags(self) -> list[str]:
        """The launch flags, for the command that resumes (the same on every node but --node-rank)."""
        if self.nnodes == 1:
            return ["--nproc-per-node", str(self.nproc_per_node)]
        return ["--nproc-per-node", str(self.nproc_per_node), "--nnodes", str(self.nnodes), "--node-rank",
                str(self.node_rank), "--master-addr", self.master_addr, "--master-port", str(self.master_port)]

    def describe(self, cuda: bool) -> str:
        backend = "nccl" if cuda else "gloo"
        where = f"{self.nproc_per_node} per node x {self.nnodes} nodes" if self.nnodes > 1 else "this machine"
        return f"training on {self.world} ranks ({where}, {backend}, rendezvous {self.master_addr}:{self.master_port})"


def ranks_on_this_node(cfg: DistributedConfig, nproc_flag: int | None) -> int:
    """--nproc-per-node, else distributed.gpus ('one', 'all', or a number of this machine's GPUs)."""
    if nproc_flag is not None:
        if nproc_flag < 1:
            raise NovaError(f"--nproc-per-node must be at least 1 (got {nproc_flag})")
        return nproc_flag
    if cfg.gpus == "one":
        return 1
    from nova.lazy import require

    torch = require("torch")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise NovaError(f"distributed.gpus is {cfg.gpus!r} but this machine has no CUDA GPU",
                        hint="use --nproc-per-node N to run N CPU ranks (gloo), or set distributed.gpus: one")
    if cfg.gpus == "all":
        return count
    if cfg.gpus > count:
        raise NovaError(f"distributed.gpus is {cfg.gpus} but this machine has {count} GPU(s)",
                        hint=f"use 1..{count} or 'all'")
    return int(cfg.gpus)


def torchrun_command(launch: Launch, rank_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "nova.train.torchrun", f"--nproc-per-node={launch.nproc_per_node}",
            f"--nnodes={launch.nnodes}", f"--node-rank={launch.node_rank}", f"--master-addr={launch.master_addr}",
            f"--master-port={launch.master_port}", "-m", "nova", "train", *rank_args]


def run_ranks(launch: Launch, rank_args: list[str], rerun_hint: str) -> int:
    """Start the ranks and wait; returns the exit code to leave with (errors already printed)."""
    with tempfile.TemporaryDirectory(prefix="nova-launch-") as tmp:
        result = Path(tmp) / "result.json"
        rerun_hint = f"{rerun_hint} {' '.join(launch.flags())}" + (
            ", the same on every node but --node-rank" if launch.nnodes > 1 else "")
        env = {**os.environ, LAUNCHED_ENV: "1", RESULT_ENV: str(result), QUIET_ENV: "1", RERUN_ENV: rerun_hint}
        proc = subprocess.Popen(torchrun_command(launch, rank_args), env=env)
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def forward(signum: int, frame: object) -> None:  # Ctrl-C reaches the ranks itself (same group)
            if signum == signal.SIGTERM:
                proc.send_signal(signal.SIGTERM)

        for s in previous:
            signal.signal(s, forward)
        try:
            code = proc.wait()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        return _report(code, result, rerun_hint)


def _report(code: int, result: Path, rerun_hint: str) -> int:
    from nova.errors import printable

    if result.exists():
        data = json.loads(result.read_text(encoding="utf-8"))
        lines = data.get("lines") or []
        for i, line in enumerate(lines):
            print(printable(f"error: {line}" if i == 0 and data.get("code") != 0 else line), file=sys.stderr)
        return int(data.get("code", 1))
    if code != 0:
        print(printable(f"error: a rank of the run failed or was killed (torchrun exit code {code}; its own "
                        f"report is above); the other ranks were stopped (to resume: {rerun_hint})"),
              file=sys.stderr)
        return 1
    return 0


def report_to_launcher(code: int, lines: list[str]) -> int | None:
    """In a rank started by ``nova train --nproc-per-node``: hand an error or a stop to the parent
    (each node's local rank 0 writes it for its own launcher) and return the code the rank exits
    with, so it can exit quietly; None otherwise.

    On one node that code is 0 (the parent reports it); over several nodes it is the error's own:
    a rank leaving with 0 would keep its torchrun at the exit barrier, waiting up to 5 minutes for
    a node that died.
    """
    path = os.environ.get(RESULT_ENV)
    if not path:
        return None
    if os.environ.get("LOCAL_RANK", "0") == "0":
        Path(path).write_text(json.dumps({"code": code, "lines": lines}), encoding="utf-8")
    return code if int(os.environ.get("GROUP_WORLD_SIZE") or 1) > 1 else 0
