"""Keep credentials out of logs, MLflow params and reports."""

from __future__ import annotations

import re
from typing import Any

# scheme://user:password@host  ->  scheme://user:***@host. The password runs to the next
# "@", "/" included: SQLAlchemy reads postgresql://u:ab/cd@host as password "ab/cd".
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<secret>[^@\s]+)@")
_QUERY_SECRET = re.compile(r"(?i)(?P<head>[?&](?:password|passwd|pwd|token|secret)=)[^&\s]+")


def mask_secrets(text: str) -> str:
    """Replace passwords inside URLs (and password/token query parameters) with ***."""
    text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    return _QUERY_SECRET.sub(r"\g<head>***", text)


def mask_value(value: Any) -> Any:
    return mask_secrets(value) if isinstance(value, str) else value
