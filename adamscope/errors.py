"""User-facing errors: one line each, naming the file or key and what is wrong."""

from __future__ import annotations


class AdamscopeError(Exception):
    """Base class for every error adamscope reports to a user (exit code 2)."""

    exit_code = 2


class UnsupportedFormatError(AdamscopeError):
    """The path holds something adamscope cannot read as Adam state."""


class NotAdamError(AdamscopeError):
    """The checkpoint holds an optimizer, but not an Adam-family one."""


class CorruptCheckpointError(AdamscopeError):
    """The file is truncated, inconsistent or otherwise broken."""


class UnsafePickleError(AdamscopeError):
    """A pickle references a global outside the allowlist; nothing was executed."""


class NamingError(AdamscopeError):
    """Parameter names cannot be recovered without guessing."""
