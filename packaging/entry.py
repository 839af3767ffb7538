"""Entry point of the PyInstaller bundle: the same CLI (and GUI without a command)."""

from merger_gui.cli import main

raise SystemExit(main())
