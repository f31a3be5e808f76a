from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Pyresty  # noqa: E402


@pytest.fixture
def make_server(tmp_path: Path):
    """Build (and at teardown stop and check) pyresty servers in a temp prefix."""
    started: list[Pyresty] = []

    def build(config: str, files: dict[str, str] | None = None, *,
              expect_log: tuple[str, ...] = (), start: bool = True, **kwargs) -> Pyresty:
        prefix = tmp_path / f"srv{len(started)}"
        prefix.mkdir()
        server = Pyresty(prefix, config, files, expect_log)
        started.append(server)
        if start:
            server.start(**kwargs)
        return server

    yield build
    for server in started:
        server.stop()
