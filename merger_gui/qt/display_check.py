"""Whether the window can open here, checked before Qt is started (Qt aborts without a usable display).

Imports no Qt: Qt's own failure is an abort (exit 134) whose advice, "Reinstalling the application
may fix this problem", does not help when the display or a system library is what is missing.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Mapping

# What Qt's xcb platform plugin loads that a desktop may lack: soname -> Debian/Ubuntu package.
XCB_LIBRARIES = {
    "libxcb-cursor.so.0": "libxcb-cursor0",  # needed since Qt 6.5, the one most often missing
    "libxcb-icccm.so.4": "libxcb-icccm4",
    "libxcb-keysyms.so.1": "libxcb-keysyms1",
    "libxcb-image.so.0": "libxcb-image0",
    "libxcb-render-util.so.0": "libxcb-render-util0",
    "libxkbcommon-x11.so.0": "libxkbcommon-x11-0",
}
ALTERNATIVES = "render the window with `merger-gui --screenshot out.png RECIPE`, or use the CLI (`merger-gui --help`)"


def loadable(soname: str) -> bool:
    """Whether the dynamic linker finds the shared library ``soname`` (as Qt's plugin would)."""
    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def display_problem(environ: Mapping[str, str] | None = None,
                    is_loadable: Callable[[str], bool] = loadable) -> str | None:
    """Why the window cannot open, in one line; None when it can or when Qt's platform is not X11/Wayland.

    Args:
        environ: The environment (default ``os.environ``).
        is_loadable: Checks a shared library by soname (replaced in tests).
    """
    env = os.environ if environ is None else environ
    if not sys.platform.startswith("linux"):
        return None
    platform = env.get("QT_QPA_PLATFORM", "").split(";")[0].split(":")[0]
    if platform not in ("", "xcb") or (not platform and env.get("WAYLAND_DISPLAY")):
        return None  # a platform the user chose, or Wayland (which Qt tries first)
    if not env.get("DISPLAY"):
        return f"no display found (DISPLAY and WAYLAND_DISPLAY are not set); {ALTERNATIVES}"
    missing = [package for soname, package in XCB_LIBRARIES.items() if not is_loadable(soname)]
    if missing:
        return (f"the window needs system libraries that are missing; install them (Debian/Ubuntu: "
                f"sudo apt install {' '.join(missing)}), or {ALTERNATIVES}")
    return None
