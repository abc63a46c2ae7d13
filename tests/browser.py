"""Render a local page in Debian's headless Chromium: its final DOM and its console messages."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                    "(.ci/system-packages installs it)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


def render(page: Path, tmp_path: Path, budget_ms: int = 8000) -> tuple[str, list[str]]:
    """Load ``page``, let its scripts run, return (DOM after scripts, console messages).

    Chromium logs every console message (console.error included) and uncaught exceptions as
    "CONSOLE" lines; a clean page logs none, so callers assert the list is empty.
    """
    proc = subprocess.run(
        [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}", "--enable-logging=stderr",
         "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return proc.stdout, console
