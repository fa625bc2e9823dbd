"""Other libraries' output goes to a log file, not the terminal.

transformers, llm-compressor (loguru), compressed-tensors and datasets print progress
bars, INFO lines and warnings; llama.cpp prints from C. For the length of a command,
tokenomy points file descriptor 2 at `$TOKENOMY_HOME/logs/VERB-TIME.log` (and tells
llm-compressor, which logs to stdout, to log there too), and keeps the terminal's stderr
for its own progress. The log is named when a command ends, or fails, having written
to it.

Only descriptor 2 moves: stdout (tables, `--json`) is untouched, and where `sys.stderr`
is not descriptor 2 (a test's CliRunner) nothing changes.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from tokenomy.home import home, open_private, private_dir


@contextmanager
def library_output_to_log(verb: str) -> Iterator[tuple[TextIO, Path | None]]:
    """Yield (a stream on the terminal's stderr for tokenomy's own messages, the log's
    path or None when nothing was redirected)."""
    try:
        redirect = sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # replaced by a non-file (tests)
        redirect = False
    if not redirect:
        yield sys.stderr, None
        return
    path = private_dir(home() / "logs") / f"{verb}-{dt.datetime.now():%Y%m%d-%H%M%S-%f}.log"
    sys.stderr.flush()
    saved = os.dup(2)
    terminal = os.fdopen(os.dup(saved), "w", buffering=1)
    with open_private(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    # llm-compressor's loguru sink writes to stdout: no console sink, its lines to the log
    env = {"LLM_COMPRESSOR_LOG_LEVEL": "", "LLM_COMPRESSOR_LOG_FILE": str(path)}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    failed = False
    try:
        yield terminal, path
    except BaseException:
        failed = True
        raise
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if path.stat().st_size:
            what = "the libraries' output, tracebacks included" if failed else "libraries' logs"
            terminal.write(f"({what}: {path})\n")
        else:
            path.unlink()
        terminal.close()
