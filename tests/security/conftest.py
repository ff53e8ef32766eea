"""Fixtures for the security tests: real `framepipe serve` processes on loopback, attacked over a
real socket. Each test says what a hostile client does and what must still hold."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator, List

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "support"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from framepipe_testing import FramepipeServer  # noqa: E402


@pytest.fixture
def make_server() -> Iterator:
    started: List[FramepipeServer] = []

    def make(*args: str, **kw) -> FramepipeServer:
        s = FramepipeServer(args, **kw)
        started.append(s)
        return s

    yield make
    for s in started:
        s.close()
