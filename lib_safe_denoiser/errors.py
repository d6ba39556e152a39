"""Error types shared by the library and its front-ends.

Front-ends (WebUI glue, REST routes, CLI) catch ``SafeDenoiserError`` and show its message as is,
so every message must say what went wrong and how to fix it, without a traceback.
"""

from __future__ import annotations


class SafeDenoiserError(Exception):
    """Base of every error this extension raises on purpose."""


class BankError(SafeDenoiserError, ValueError):
    """A bad bank name, bank content, image or bank file; the message says what and how to fix it."""


class BankNotFoundError(BankError, KeyError):
    """No bank of that name exists."""

    def __str__(self) -> str:
        # KeyError.__str__ repr()s its argument ("'msg'"); keep the plain message for users.
        return str(self.args[0]) if self.args else ""


class EncodeCancelled(BankError):
    """The user stopped a bank's encoding; nothing was cached, and the next use encodes again."""
