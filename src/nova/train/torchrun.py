"""torch's elastic launcher for nova's ranks, without its own failure report.

``nova train --nproc-per-node/--nnodes`` runs ``python -m nova.train.torchrun`` instead of
``torch.distributed.run``: the same launcher (rendezvous, worker monitoring, signal forwarding),
but when a rank fails its multi-line traceback and error table are left out, because the rank
and nova's launcher already say what happened, once (nova.train.launch). ``--debug`` keeps them.
"""

from __future__ import annotations

import logging
import os
import sys

QUIET_ENV = "NOVA_TORCHRUN_QUIET"


def main() -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun_main
    from torch.distributed.run import parse_args, run

    if os.environ.get(QUIET_ENV) != "1":
        torchrun_main()
        return
    for name in list(logging.root.manager.loggerDict):  # "failed (exitcode: 1) ..." and the like
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(sys.argv[1:]))
    except ChildFailedError as exc:
        codes = [f.exitcode for f in exc.failures.values()]
        sys.exit(next((c for c in codes if c > 0), 1))


if __name__ == "__main__":
    main()
