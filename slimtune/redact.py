"""Secrets out of everything slimtune writes or prints: run.json, reports, error messages and logs.

A secret is a value interpolated from the environment (`${NAME}` in a config), or a string written under a key
that holds credentials (`hf_token`, `hub_token`, `client_secret`, `account_key`, `password` ...). The config
loader remembers them here for the life of the process; records are redacted by key and by value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_LENGTH = 4  # shorter values ("1", "cpu") are no secrets, and masking them everywhere would garble text

_SECRET_KEY = re.compile(
    r"^(?:.*[_-])?(?:token|auth_token|access_token|sas_token|secret|client_secret|secret_key|password|passwd"
    r"|api[_-]?key|access_?key|account_?key|connection_string|credentials?"
    r"|authorization|cookie|subscription[_-]key)$",  # HTTP headers (storage_options.headers) too
    re.IGNORECASE,
)
_NOT_SECRET = re.compile(r"^(?:pad|bos|eos|unk|sep|cls|mask|special|max_new|max)[_-]tokens?$", re.IGNORECASE)

# secrets carried inside URLs: SAS signatures, presigned S3 query parameters, tokens, user:password@
_URL_QUERY_SECRET = re.compile(
    r"(?i)([?&](?:sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|token|access_token"
    r"|api_?key|code)=)[^&#\s'\":),]+"
)
_URL_PASSWORD = re.compile(r"(://[^/@:\s]+:)[^/@\s]+@")

_known: set[str] = set()


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(_SECRET_KEY.match(key)) and not _NOT_SECRET.match(key)


def remember(values: Iterable[str]) -> None:
    """Mask these values from now on (in this process)."""
    _known.update(v for v in values if isinstance(v, str) and len(v) >= MIN_LENGTH)


def known() -> set[str]:
    return set(_known)


def forget() -> None:
    """Forget every remembered secret (tests run many configs in one process)."""
    _known.clear()


def secret_values(data: Any) -> set[str]:
    """Strings written under credential keys anywhere in `data`."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if is_secret_key(key) and isinstance(item, str) and item:
                    found.add(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return found


def mask_secret_keys(value: Any) -> Any:
    """`value` with the strings under credential keys masked, and nothing else changed: what a cache key may
    hold (a token is who runs, not an input of the computation; masking every known ${ENV} value here could
    make two different parameters look the same)."""
    if isinstance(value, dict):
        return {
            k: MASK if is_secret_key(k) and isinstance(v, str) and v else mask_secret_keys(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [mask_secret_keys(v) for v in value]
    return value


def redact_url(url: str) -> str:
    """`url` with the secrets it carries (SAS signature, presigned query parameters, a password) masked."""
    return _URL_PASSWORD.sub(rf"\g<1>{MASK}@", _URL_QUERY_SECRET.sub(rf"\g<1>{MASK}", url))


def redact_text(text: str, secrets: Iterable[str] | None = None) -> str:
    if "=" in text or "@" in text:
        text = redact_url(text)
    for secret in sorted(set(secrets or ()) | _known, key=len, reverse=True):  # longest first: no leftovers
        if len(secret) >= MIN_LENGTH:
            text = text.replace(secret, MASK)
    return text


def redact(value: Any, secrets: Iterable[str] | None = None) -> Any:
    """`value` with credential keys' strings and every known secret masked (a new object; `value` is kept)."""
    secrets = set(secrets or ()) | _known
    if isinstance(value, dict):
        return {
            k: MASK if is_secret_key(k) and isinstance(v, str) and v else redact(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


class RedactingFilter(logging.Filter):
    """Masks known secrets in log records (installed on the CLI's log handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _known:
            message = record.getMessage()
            masked = redact_text(message)
            if masked != message:
                record.msg, record.args = masked, None
        return True


class RedactingStream:
    """A text stream that masks known secrets in what is written to it (progress lines print paths and
    parameters that may hold `${ENV}` values). Everything else is the wrapped stream's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_text(text) if _known and isinstance(text, str) else text)
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
