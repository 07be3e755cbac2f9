"""Core library of DDM (Docker Data Migration): configuration, tasks, errors and events."""

__version__ = "0.1.0"
