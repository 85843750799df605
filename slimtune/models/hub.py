"""The Hugging Face Hub: model ids (`org/name`, `org/name@revision`, `hf://org/name`) downloaded with
huggingface_hub, as users of transformers expect.

Everything huggingface_hub honours applies: `HF_TOKEN` (or the token `hf auth login` saved), `HF_ENDPOINT`,
`HF_HOME` / `HF_HUB_CACHE`, and offline mode (`HF_HUB_OFFLINE=1`: the copy in the local cache is used, and its
absence is an error). A model is downloaded into the hub's own cache, so a model other programs fetched is not
fetched again; only the files a model folder needs are downloaded (config, tokenizer, safetensors weights at the
top of the repository; pickled weights only where allowed and no safetensors exist).

A download lands in `<cache>/models--org--name/snapshots/<commit sha>/`: `origin` reads the repository and the
resolved commit back from that path, and the engine puts them into the input model's identity, so a branch that
moved is a new input. Errors name the repository and, for 401/403, where the token came from (never the token).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

from slimtune.errors import ModelError, UserError

_NAME = re.compile(r"^(?:hf://)?(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
_SNAPSHOT = re.compile(r"(?P<type>models|datasets)--(?P<repo>[^/]+?)/snapshots/(?P<commit>[0-9a-f]{40})$")
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja", "*.py"]
PICKLED_FILES = ["*.bin"]


def parse_name(value: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) for a hub model id, None for anything else."""
    if value.startswith((".", "/", "~")):
        return None
    match = _NAME.match(value)
    return (match["repo"], match["revision"]) if match else None


def origin(folder: str | Path) -> dict[str, str] | None:
    """{"hub": repo id, "commit": sha} for a folder in the hub cache (a snapshot), None for any other folder."""
    match = _SNAPSHOT.search(Path(folder).as_posix())
    if not match:
        return None
    return {"hub": match["repo"].replace("--", "/", 1), "commit": match["commit"]}


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


def download_model(repo_id: str, revision: str | None, *, allow_pickle: bool = False) -> Path:
    """The snapshot folder of a hub model, downloaded (or found in the local cache) with huggingface_hub."""
    from huggingface_hub import HfApi, snapshot_download

    what = f"{repo_id}@{revision}" if revision else repo_id
    with hub_errors(what, "model"):
        patterns = list(MODEL_FILES)
        if allow_pickle and not is_offline():
            files = HfApi().list_repo_files(repo_id, revision=revision)
            if not any(f.endswith(".safetensors") for f in files):
                patterns += PICKLED_FILES
        elif allow_pickle:
            patterns += PICKLED_FILES
        folder = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            ignore_patterns=["*/*"],  # sub-folders (onnx/, original/, gguf/) are other formats
        )
    return Path(folder)


def check_model(repo_id: str, revision: str | None, *, allow_pickle: bool = False) -> None:
    """The repository and revision exist, the token may read them, and they hold a Hugging Face model:
    asked of the hub without downloading weights. In offline mode, the local copy must be there."""
    from huggingface_hub import HfApi, snapshot_download

    what = f"{repo_id}@{revision}" if revision else repo_id
    with hub_errors(what, "model"):
        if is_offline():
            snapshot_download(
                repo_id, revision=revision, local_files_only=True, allow_patterns=["config.json"]
            )
            return
        files = set(HfApi().list_repo_files(repo_id, revision=revision))
    if "config.json" not in files:
        raise ModelError(f"hub model {what} has no config.json, so it is not a Hugging Face model")
    if not any(f.endswith(".safetensors") and "/" not in f for f in files):
        pickled = [f for f in files if f.endswith(".bin") and "/" not in f]
        if not pickled:
            raise ModelError(f"hub model {what} has no safetensors weights at the top of the repository")
        if not allow_pickle:
            raise ModelError(
                f"hub model {what} has only pickled weights ({', '.join(sorted(pickled))}), which can run code "
                "when loaded; allow them with input_model.load_kwargs.use_safetensors: false if you trust them"
            )


def commit_of(repo_id: str, revision: str | None, repo_type: str = "model") -> str:
    """The commit sha `revision` (default: main) of a repository points at now; offline, the one the local
    cache recorded."""
    from huggingface_hub import HfApi, constants

    revision = revision or "main"
    if re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    what = f"{repo_id}@{revision}"
    if is_offline():
        folder = f"{repo_type}s--{repo_id.replace('/', '--')}"
        ref = Path(constants.HF_HUB_CACHE, folder, "refs", revision)
        if not ref.is_file():
            raise UserError(
                f"hub {repo_type} {what}: offline mode (HF_HUB_OFFLINE) is on and the local cache "
                f"({constants.HF_HUB_CACHE}) has no copy of it; download it once with the network"
            )
        return ref.read_text().strip()
    with hub_errors(what, repo_type):
        return HfApi().repo_info(repo_id, revision=revision, repo_type=repo_type).sha


def is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def hub_errors(what: str, repo_type: str = "model") -> Iterator[None]:
    """huggingface_hub's and datasets' errors as user errors naming the repository (and the token's source)."""
    from huggingface_hub import errors

    kind = "hub model" if repo_type == "model" else "hub data set"
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
        raise UserError(f"{kind} {what}: {reason}, and the local cache has no copy of it") from None
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
    except (ConnectionError, OSError) as err:
        if isinstance(err, UserError):
            raise
        raise UserError(f"{kind} {what}: {endpoint()} cannot be reached ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
