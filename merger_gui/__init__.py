"""merger_gui: design LLM merge recipes visually and merge them locally."""

__version__ = "0.1.0"
