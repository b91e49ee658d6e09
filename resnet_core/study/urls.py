"""Storage URLs made safe to print: passwords masked in URLs and scrubbed from drivers' messages."""

from __future__ import annotations

import re
from urllib.parse import unquote


# RFC-1738 URLs: scheme://user:password@host/... The password may hold ':' and, unencoded, '@' (a
# mistake SQLAlchemy reads as the end of the password): it runs to the last '@', so none of it shows.
_URL_PASSWORD = re.compile(r"^(?P<head>[\w+.-]+://[^:/@]*:)(?P<password>.*)(?P<tail>@[^@]*)$")
# libpq also takes the password as a query parameter: postgresql://u@h/db?password=secret
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)(?P<password>[^&]*)", re.IGNORECASE)


def mask_url(url: str) -> str:
    """A storage URL safe to print: ``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``
    (a ``?password=`` query parameter is masked too)."""
    text = str(url)
    if "://" not in text:
        return text  # a journal file path has no credentials
    match = _URL_PASSWORD.match(text)
    if match is not None:
        text = f"{match['head']}***{match['tail']}"
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}***", text)


def unencoded_at(url: str) -> bool:
    """True when a URL's password holds a raw '@': SQLAlchemy ends the password at the first '@' and
    takes the rest for the host, so a driver's "unknown host" error would print part of it."""
    match = _URL_PASSWORD.match(str(url)) if "://" in str(url) else None
    return match is not None and "@" in match["password"]


def url_passwords(url: str) -> list[str]:
    """The password(s) written in a storage URL, as written and URL-decoded (to scrub messages)."""
    text = str(url)
    if "://" not in text:
        return []
    found = [m["password"] for m in _QUERY_PASSWORD.finditer(text)]
    match = _URL_PASSWORD.match(text)
    if match is not None:
        found.append(match["password"])
    return sorted({v for p in found if p for v in (p, unquote(p))}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """``text`` with every password of ``url`` replaced by ``***`` (for messages from drivers)."""
    for password in url_passwords(url):
        text = text.replace(password, "***")
    return text
