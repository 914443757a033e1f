"""User-facing errors.

A :class:`CircuitrayError` carries a one-line message that names the problem (file,
row, column, model path). The CLI prints it and exits non-zero without a traceback;
anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class CircuitrayError(Exception):
    """An error caused by the user's input or environment, explained in one line."""


class PromptFileError(CircuitrayError):
    """A prompt file is missing, unreadable, or has bad rows."""


class ModelLoadError(CircuitrayError):
    """A model or transcoder reference cannot be resolved or loaded."""


class RunDirError(CircuitrayError):
    """A run folder is missing, incomplete, or in use."""


class StaleSessionError(RuntimeError):
    """A worker's driver no longer owns the run folder: its results are dropped. Not a
    user error: the driver that fenced the folder computes those prompts again."""
