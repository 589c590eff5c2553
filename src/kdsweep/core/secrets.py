"""Keep credentials out of logs, MLflow params and reports.

A text that is one database URL is rendered by SQLAlchemy with its password hidden. The
regular expressions cover what SQLAlchemy does not: URLs inside a longer text, http(s)
URLs, password/token query parameters, and the ``\\:``-escaped URLs Hydra's launchers log
for each job's overrides (``tracking.uri=postgresql\\://u\\:pw@host/db``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

# One URL, alone: scheme://... with no white space.
_WHOLE_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://\S*")
# scheme://user:password@host -> scheme://user:***@host, also escaped as Hydra writes
# overrides (scheme\://user\:pass\ word@host: an escaped space is part of it). The
# password runs to the next "@", "/" included: SQLAlchemy reads postgresql://u:ab/cd@host
# as password "ab/cd".
_URL_PASSWORD = re.compile(
    r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*\\?://[^:/@\s\\]*)(?P<sep>\\?:)(?P<secret>(?:\\.|[^@\s])+)@"
)
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|token|secret)=)[^&\s]+")


def _database_url(text: str) -> str | None:
    """``text`` rendered by SQLAlchemy with its password hidden, if it is exactly one
    database URL with a password; else None."""
    if not _WHOLE_URL.fullmatch(text) or text.lower().startswith(("http://", "https://")):
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        return None
    if url.password is None:
        return None
    return url.render_as_string(hide_password=True)


def mask_secrets(text: str) -> str:
    """Replace passwords inside URLs (and password/token query parameters) with ***."""
    masked = _database_url(text)
    if masked is None:
        masked = _URL_PASSWORD.sub(r"\g<head>\g<sep>***@", text)
    return _QUERY_SECRET.sub(r"\g<head>***", masked)


def mask_value(value: Any) -> Any:
    return mask_secrets(value) if isinstance(value, str) else value


class MaskSecrets(logging.Filter):
    """Masks every record a handler writes, its traceback included: the one place where
    log lines lose their passwords (Hydra's logging configs put it on the console and the
    job's log file, conf/hydra/*_logging/kdsweep.yaml), so log calls pass values as they
    are."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_secrets(logging.Formatter().formatException(record.exc_info))
        return True
