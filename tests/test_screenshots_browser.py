"""bench/screenshots.py, the README's screenshots, runs from start to end and writes each
picture at its size (the merger runs it again after all merges)."""

from __future__ import annotations

import struct
from pathlib import Path

from bench import screenshots
from tests.browser import needs_chromium

pytestmark = needs_chromium


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def test_the_screenshot_script_writes_every_picture_at_its_size(tmp_path: Path) -> None:
    assert screenshots.main(["--out", str(tmp_path)]) == 0
    # The phone's pictures at its device scale factor of 2.
    expected = {
        "chat-390-light.png": (780, 1688),
        "chat-390-dark.png": (780, 1688),
        "chat-390-drawer-light.png": (780, 1688),
        "chat-390-drawer-dark.png": (780, 1688),
        "chat-1280-light.png": (1280, 800),
        "chat-1280-dark.png": (1280, 800),
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)
    for name, size in expected.items():
        assert png_size(tmp_path / name) == size, name
    # Light and dark differ (the dark one is not the light one again).
    light = (tmp_path / "chat-1280-light.png").read_bytes()
    assert light != (tmp_path / "chat-1280-dark.png").read_bytes()
