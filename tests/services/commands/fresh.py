"""A ``visionpipe`` command in a process of its own, as a user runs it, telling whether it imported torch.

A command that must answer before loading any model (a wrong broker URL, a port in use) is checked by that:
torch not imported means no model was loaded, however fast or slow the machine.
"""

from __future__ import annotations

import os
import subprocess
import sys


def in_a_fresh_process(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, bool]:
    """(exit code, stderr, whether torch was imported): a command run as a user runs it, in its own process."""
    script = (
        "import sys\nfrom visionpipe.cli import main\ntry:\n    main(sys.argv[1:])\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported', code)"
    )
    env = {**os.environ, **(env or {})}
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120, env=env)
    torch_state, code = proc.stdout.strip().splitlines()[-1].rsplit(" ", 1)
    return int(code) if code != "None" else 0, proc.stderr, torch_state == "torch imported"
