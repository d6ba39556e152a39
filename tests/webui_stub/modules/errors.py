"""modules/errors.py: report() logs an exception and carries on, as the WebUI does."""

import logging
import traceback

reported: list[str] = []
"""Messages reported so far (the real report() only prints; tests read what was swallowed)."""


def report(message: str, *, exc_info: bool = False) -> None:
    reported.append(message + ("\n" + traceback.format_exc() if exc_info else ""))
    logging.getLogger("webui_stub").error(message, exc_info=exc_info)
