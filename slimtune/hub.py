"""The Hugging Face Hub, as huggingface_hub sees it: names (`org/name`, `org/name@revision`, `hf://org/name`),
the commit a revision points at, where the token comes from, and the hub's errors as user errors.

Everything huggingface_hub honours applies: `HF_TOKEN` (or the token `hf auth login` saved), `HF_ENDPOINT`,
`HF_HOME` / `HF_HUB_CACHE`, offline mode (`HF_HUB_OFFLINE=1`). Models (`models/hub.py`) and data sets
(`data/load.py`) both use this module; it imports only `errors` of slimtune, and huggingface_hub inside functions.
Errors name the repository and, for 401/403, where the token came from (never the token).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

from slimtune.errors import UserError

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")


def parse_name(value: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) for a hub model id, None for anything else."""
    if value.startswith((".", "/", "~")):
        return None
    match = _NAME.match(value)
    return (match["repo"], match["revision"]) if match else None


def token_source() -> str:
    """Where huggingface_hub takes the token from, in words (never the token)."""
    from huggingface_hub import constants

    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        if os.environ.get(variable):
            return f"the token in ${variable}"
    if Path(constants.HF_TOKEN_PATH).is_file():
        return f"the token saved by `hf auth login` ({constants.HF_TOKEN_PATH})"
    return "no token (set HF_TOKEN, or run `hf auth login`)"


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


class HubUnreachable(UserError):
    """The hub endpoint cannot be reached (a cached copy may still serve)."""


@functools.lru_cache(maxsize=64)
def commit_of(repo_id: str, revision: str | None, repo_type: str = "model") -> str:
    """The commit sha `revision` (default: main) of a repository points at now; offline, or when the hub cannot
    be reached, the one the local cache recorded (said in the log)."""
    from huggingface_hub import HfApi

    what = f"{repo_id}@{revision}" if revision else repo_id
    revision = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    ref = _ref_file(repo_id, revision, repo_type)
    if is_offline():
        if not ref.is_file():
            kind = "hub model" if repo_type == "model" else "hub data set"
            raise UserError(
                f"{kind} {what}: offline mode (HF_HUB_OFFLINE) is on and the local cache "
                f"({ref.parents[2]}) has no copy of it; download it once with the network"
            )
        return ref.read_text().strip()
    try:
        with hub_errors(what, repo_type):
            sha = HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha
    except HubUnreachable as err:
        if not ref.is_file():
            raise
        sha = ref.read_text().strip()
        log.warning("%s; using the copy in the local cache (commit %s)", err, sha)
        return sha
    with contextlib.suppress(OSError):  # where huggingface_hub keeps it too: for offline mode
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(sha)
    return sha


def cached_commit(repo_id: str, revision: str | None, repo_type: str = "model") -> str | None:
    """The commit the local hub cache recorded for `revision`, None when it has none."""
    revision = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    ref = _ref_file(repo_id, revision, repo_type)
    return ref.read_text().strip() if ref.is_file() else None


def _ref_file(repo_id: str, revision: str, repo_type: str) -> Path:
    """`refs/<revision>` of a repository in the hub cache: the commit the revision last resolved to."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE, f"{repo_type}s--{repo_id.replace('/', '--')}", "refs", revision)


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def hub_errors(what: str, repo_type: str = "model") -> Iterator[None]:
    """huggingface_hub's and datasets' errors as user errors naming the repository (and the token's source)."""
    from huggingface_hub import errors

    kind = "hub model" if repo_type == "model" else "hub data set"
    for transport in ("httpx", "httpx2"):  # one INFO line per request otherwise (slimtune logs at INFO)
        logging.getLogger(transport).setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        yield
    except errors.GatedRepoError:
        raise UserError(
            f"{kind} {what} is gated: accept its conditions on the hub with your account, then give that "
            f"account's token (used: {token_source()})"
        ) from None
    except errors.RevisionNotFoundError:
        raise UserError(f"{kind} {what}: the revision does not exist on {endpoint()}") from None
    except errors.RepositoryNotFoundError as err:
        status = err.response.status_code if err.response is not None else None
        auth = f" or the token cannot read it (used: {token_source()})" if status in (401, 403) else ""
        raise UserError(f"{kind} {what} does not exist on {endpoint()}{auth}") from None
    except errors.OfflineModeIsEnabled:
        raise UserError(
            f"{kind} {what}: offline mode (HF_HUB_OFFLINE) is on and the local cache has no copy of it; "
            "download it once with the network"
        ) from None
    except errors.LocalEntryNotFoundError:
        reason = (
            "offline mode (HF_HUB_OFFLINE) is on"
            if is_offline()
            else f"{endpoint()} cannot be reached (set HF_ENDPOINT for a mirror)"
        )
        error = UserError if is_offline() else HubUnreachable
        raise error(f"{kind} {what}: {reason}, and the local cache has no copy of it") from None
    except errors.HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status in (401, 403):
            raise UserError(
                f"{kind} {what}: the hub refused the token ({status}; used: {token_source()}); check that it "
                "is valid and may read this repository"
            ) from None
        raise UserError(
            f"{kind} {what}: the hub answered {status or 'an error'} ({_first_line(err)})"
        ) from None
    except UserError:
        raise
    except Exception as err:  # the transport's own errors (httpx), or OSError / ConnectionError
        if not isinstance(err, OSError) and not type(err).__module__.startswith(("httpx", "httpcore")):
            raise
        raise HubUnreachable(f"{kind} {what}: {endpoint()} cannot be reached ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
