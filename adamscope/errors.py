"""User-facing errors: one line each, naming the file or key and what is wrong."""

from __future__ import annotations


class AdamscopeError(Exception):
    """Base class for every error adamscope reports to a user (exit code 2). The message is
    kept to one line: line breaks a quoted library error brings along become spaces (as the
    CLI prints them)."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str) and ("\n" in args[0] or "\r" in args[0]):
            import re

            args = (re.sub(r"\s*[\r\n]+\s*", " ", args[0].strip()), *args[1:])
        super().__init__(*args)


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


def torch_reason(error: BaseException) -> str:
    """The part of a torch.load error worth one line: the unpickler's own reason, without torch's
    advice to re-run with weights_only=False (adamscope never does that for a user's file)."""
    text = str(error)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.strip()
    kept = [
        s
        for s in " ".join(text.split()).split(". ")
        if "weights_only" not in s.replace("`", "") or "=True" in s
    ]
    return (". ".join(kept) or type(error).__name__)[:200]
