"""Remote storage: which strings are URLs, the fsspec filesystem for one (with credentials from the usual places),
downloads into the cache (checked, resumed, keyed by the remote object's version), Azure ML datastores.

Nothing here imports fsspec or a cloud SDK at module level: `slimtune --help` and `validate --config-only` stay
light (tests/test_cli_imports.py).
"""

from slimtune.storage.fs import REMOTE_SCHEMES, StorageError, is_remote_url, open_filesystem

__all__ = ["REMOTE_SCHEMES", "StorageError", "is_remote_url", "open_filesystem"]
