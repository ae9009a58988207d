"""The version of modelseal, in one place (read by the package, the CLI, the bench and evidence files)."""

__version__ = "0.1.0"
