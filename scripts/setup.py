"""Set up nova on a fresh clone with any Python 3.10+, no bash needed (Windows, macOS, Linux).

    python scripts/setup.py            # venv, install, embedded model, then the demo
    python scripts/setup.py --no-demo  # set up only

The steps are nova.setup's (src/nova/setup.py, standard library only), run before nova is installed.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from nova.setup import main  # noqa: E402  (after the path to the checkout's src)

if __name__ == "__main__":
    import os

    os.chdir(ROOT)
    sys.exit(main())
