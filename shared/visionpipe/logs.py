"""Structured logging: key=value lines for people, JSON lines for log collectors.

Plain text either way: uvicorn hands every record a ``color_message`` twin with terminal colour codes, which
would reach a file or a log collector as ``\\x1b[36m`` noise, so it is dropped, and escape codes inside a
message are removed when the stream is not a terminal.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import TextIO

_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
# Extras left out of every line: uvicorn's coloured copy of the message.
_DROPPED = frozenset({"color_message"})
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and k not in _DROPPED}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": _ANSI.sub("", record.getMessage()),
        }
        doc.update(_extras(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


class KeyValueFormatter(logging.Formatter):
    def __init__(self, terminal: bool = False) -> None:
        super().__init__()
        self.terminal = terminal

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{self.formatTime(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        line = f"{line} {extra}" if extra else line
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line if self.terminal else _ANSI.sub("", line)


def setup_logging(level: str = "INFO", json_lines: bool = False, stream: TextIO | None = None) -> None:
    """Configure the root logger once per process (stderr, so stdout stays for results)."""
    stream = stream or sys.stderr
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter(terminal=stream.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
