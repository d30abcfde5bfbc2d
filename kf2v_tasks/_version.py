"""The package version, kept apart so low layers can read it without importing the package's Prefect parts."""

__version__ = "0.1.0"
