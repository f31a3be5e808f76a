"""What the in-process instruction counters share (bench/*_instructions.py):
a transport that counts what an ``HttpConnection`` writes, and a run of a
child under callgrind that returns the instructions it executed."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


class Transport:
    """What HttpConnection needs of a transport; writes are counted, not sent,
    and ``on_write`` (if given) is told of each."""

    def __init__(self, on_write: Callable[[], None] | None = None) -> None:
        self.writes = 0
        self.on_write = on_write

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.on_write is not None:
            self.on_write()

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


def callgrind(script: str, args: list[str], keep_as: Path | None = None) -> int:
    """Instructions ``python script args`` executed under callgrind; the
    callgrind file is copied to ``keep_as`` when given."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        done = subprocess.run(["valgrind", "--tool=callgrind", "--dump-instr=no",
                               f"--callgrind-out-file={out}", sys.executable, script, *args],
                              capture_output=True, text=True, check=False)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if done.returncode != 0 or found is None:
            raise SystemExit(f"callgrind failed for {script} {' '.join(args)}:\n"
                             f"{done.stderr[-2000:]}")
        if keep_as is not None:
            keep_as.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(out, keep_as)
        return int(found.group(1))
