"""What a source added through the streams API may be: the API is a door into FFmpeg, which reads files and opens
URLs for many kinds of input, so what comes through it is checked against what the operator allowed.

Sources given at start (``ingest.sources``, the command line) are the operator's own and are not checked. Through
``POST /v1/streams``:

* a network URL only with a scheme of ``ingest.api_schemes``;
* a local file or device only under a folder of ``ingest.api_file_roots`` (none by default), symlinks resolved;
* ``lavfi:`` only as a chain of filters named in ``ingest.api_lavfi_filters``, with no option naming a file.
  FFmpeg's ``movie`` and ``amovie`` read any file or URL, ``metadata=mode=print:file=…`` writes any file,
  ``sendcmd`` and friends read one: none is in the default list, and an option with ``file`` in its name is
  refused whatever the filter. Quotes, escapes, labels and several chains are refused rather than parsed,
  so the check reads the graph exactly as FFmpeg will;
* ``annotate`` is refused: it writes a video file on the ingest host.
"""

from __future__ import annotations

import re
from pathlib import Path

from visionpipe.broker import redact_url
from visionpipe.services.ingest.source import LAVFI_PREFIX, classify
from visionpipe.settings import IngestSettings, StreamSource

# Graph syntax the check does not parse: quoting and escaping, pad labels, several chains, commands.
UNPARSED = re.compile(r"['\"\\\[\];{}$]")
FILTER_NAME = re.compile(r"^[A-Za-z0-9_]+$")


class Refused(ValueError):
    """A source the API does not take; the message says why and what would allow it."""


def check_api_source(spec: StreamSource, settings: IngestSettings) -> None:
    """Raise :class:`Refused` unless ``spec`` may be added through the API."""
    if spec.annotate:
        raise Refused(
            "annotate is not taken through the API: it writes a video file on the ingest host; "
            "give it with the sources at start (ingest.sources or the command line)"
        )
    source = classify(spec.url)
    if source.kind == "lavfi":
        check_lavfi(spec.url[len(LAVFI_PREFIX) :], settings.api_lavfi_filters)
    elif source.kind in ("file", "v4l2"):
        check_path(source.target, settings.api_file_roots)
    else:
        scheme = spec.url.split(":", 1)[0].lower()
        if scheme not in {s.lower() for s in settings.api_schemes}:
            raise Refused(
                f"{redact_url(spec.url)}: the scheme {scheme!r} is not taken through the API "
                f"(ingest.api_schemes: {', '.join(settings.api_schemes)})"
            )


def check_lavfi(graph: str, allowed: list[str]) -> None:
    """A chain of allowed filters, each ``name[=options]``, no option naming a file."""
    bad = UNPARSED.search(graph)
    if bad:
        raise Refused(f"lavfi graph: {bad.group()!r} is not taken through the API (one plain chain of filters only)")
    if not graph.strip():
        raise Refused("lavfi graph is empty")
    for part in graph.split(","):
        name, _, options = part.strip().partition("=")
        name = name.split("@", 1)[0]
        if not FILTER_NAME.match(name) or name not in allowed:
            raise Refused(
                f"lavfi filter {name!r} is not taken through the API (ingest.api_lavfi_filters: {', '.join(allowed)})"
            )
        for option in options.split(":"):
            key = option.split("=", 1)[0].lower() if "=" in option else ""
            if "file" in key or "url" in key:
                raise Refused(f"lavfi filter {name!r}: option {key!r} names a file or URL, not taken through the API")


def check_path(target: str, roots: list[Path]) -> None:
    """A local path, symlinks resolved, inside one of ``roots``."""
    if not roots:
        raise Refused("local files and devices are not taken through the API (set ingest.api_file_roots to allow some)")
    path = Path(target).resolve()
    if not any(path.is_relative_to(root.resolve()) for root in roots):
        raise Refused(f"{target}: not under a folder of ingest.api_file_roots")
