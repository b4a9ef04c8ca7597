"""Keeping notification URLs (they carry tokens) out of every log line, including those of apprise and urllib3.

Apprise and urllib3 log URLs at debug level (apprise masks passwords but not webhook tokens in paths). A filter on
the loggers they use rewrites each record with every part of every notification URL masked, before any handler
sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from urllib.parse import parse_qsl, unquote, urlsplit


class SecretRedactor(logging.Filter):
    """Masks every part of the notification URLs in records of the loggers apprise sends through."""

    LOGGERS = ("apprise", "urllib3.connectionpool", "requests")

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._installed = False

    def add(self, urls: Iterable[str]) -> None:
        """Mask these URLs (and their parts) from now on."""
        for url in urls:
            self._secrets |= {part for part in url_parts(url) if len(part) >= 3}
        if not self._installed:
            for name in self.LOGGERS:
                logging.getLogger(name).addFilter(self)
            self._installed = True

    def redact(self, text: str) -> str:
        """``text`` with every secret part replaced by ``***``."""
        for secret in sorted(self._secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's message with the secrets masked; drop its traceback (it may quote them)."""
        if self._secrets:
            message = self.redact(record.getMessage())
            if record.exc_info:
                message += f" ({record.exc_info[0].__name__ if record.exc_info[0] else 'error'})"
                record.exc_info, record.exc_text = None, None
            record.msg, record.args = message, None
        return True


def url_parts(url: str) -> set[str]:
    """The URL and each part of it that may carry a secret: user, password, ids, path segments, query values."""
    parts = {url}
    rest = url.partition("://")[2]
    parts.add(rest)
    split = urlsplit(f"x://{rest}")
    userinfo, _, hostport = split.netloc.rpartition("@")
    parts |= set(userinfo.split(":")) | {userinfo}
    # A host with a dot is an address (not secret); without one it is often a webhook id or a bot token.
    parts |= {piece for piece in hostport.split(":")
              if "." not in piece and piece != "localhost" and not (piece.isdigit() and len(piece) <= 5)}
    parts |= {segment for segment in split.path.split("/")}
    parts |= {value for _, value in parse_qsl(split.query)}
    parts.add(split.fragment)
    return {p for part in parts for p in (part, unquote(part)) if p}


REDACTOR = SecretRedactor()
