"""What every storage module shares: the schemes slimtune reads, and the error that names a URL."""

from __future__ import annotations

import logging
from typing import Any

from slimtune.errors import UserError
from slimtune.redact import redact_text, redact_url

REMOTE_SCHEMES = ("http", "https", "s3", "az", "abfs", "abfss", "azureml")


class StorageError(UserError):
    """A remote resource could not be read: names the URL (secrets masked) and what to change. Exit code 2."""

    unreachable = False  # the store could not be reached at all (a cached copy may stand in)
    reason = ""

    def __init__(self, url: str, message: str):
        self.reason = message
        self.url = redact_url(url)
        super().__init__(redact_text(f"{self.url}: {message}"))


def is_remote_url(value: Any) -> bool:
    """Whether `value` is a URL of a scheme slimtune reads (http(s), s3, az, abfs[s], azureml)."""
    if not isinstance(value, str) or "://" not in value:
        return False
    return value.split("://", 1)[0].lower() in REMOTE_SCHEMES


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower()


def quiet_sdk_logs() -> None:
    """The storage SDKs log every request (and Azure each credential it tries) at INFO, which the CLI shows;
    what fails reaches the user as one StorageError instead."""
    for name in ("azure", "botocore", "aiobotocore", "s3fs", "adlfs", "fsspec"):
        logging.getLogger(name).setLevel(logging.ERROR)
