"""Data shipped with the app (installed as the ``merger_gui.resources`` package)."""
