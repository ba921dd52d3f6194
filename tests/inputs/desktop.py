"""Helpers for tests that need desktop tools (Xvfb, xclip, dbus-daemon, ...).

A missing tool is installed with apt-get only when running as root under CI=true; otherwise the test is
skipped with the reason. Under CI=true a test that still cannot find its tool fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

APT_PACKAGES = {"Xvfb": "xvfb", "xclip": "xclip", "xauth": "xauth", "xprop": "x11-utils",
                "xwininfo": "x11-utils", "dbus-daemon": "dbus"}  # fmt: skip
_apt = {"updated": False}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    if in_ci():
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


def require_tools(*tools: str) -> None:
    """Make sure the tools are on PATH: apt-get install them as root under CI, else skip (fail in CI)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing and in_ci() and hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if not _apt["updated"]:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=300)
            _apt["updated"] = True
        pkgs = sorted({APT_PACKAGES.get(t, t) for t in missing})
        subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *pkgs],
                       env=env, capture_output=True, timeout=600)  # fmt: skip
        missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pkgs = " ".join(sorted({APT_PACKAGES.get(t, t) for t in missing}))
        unavailable(f"{', '.join(missing)} not installed (apt-get install -y {pkgs})")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
