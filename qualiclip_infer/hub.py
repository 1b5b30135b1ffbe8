"""Where a weights file comes from: a local path, or a file of a Hugging Face Hub repository, downloaded once and
cached. Torch-free: nothing here reads the file (:mod:`qualiclip_infer.checkpoint` does).
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from ._version import __version__
from .messages import first_line

DEFAULT_REPO_ID = "chaofengc/IQA-PyTorch-Weights"
DEFAULT_FILENAME = "QualiCLIP.pth"
HUB_PREFIX = "hf-hub:"

WeightsSpec = Union[None, str, os.PathLike]


def go_offline() -> None:
    """Switches huggingface_hub off the network for this process and the processes it starts.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, on import: call this before anything imports it.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"


class WeightsNotFoundError(FileNotFoundError):
    """The weights could not be found locally and could not (or may not) be downloaded."""


@dataclass(frozen=True)
class HubFile:
    """A file in a Hugging Face Hub model repository.

    Attributes:
        repo_id: ``ORG/REPO``.
        filename: Path of the file inside the repository.
        revision: Branch, tag or commit; ``None`` is the default branch.
    """

    repo_id: str = DEFAULT_REPO_ID
    filename: str = DEFAULT_FILENAME
    revision: Optional[str] = None

    @classmethod
    def parse(cls, spec: str) -> "HubFile":
        """Parses ``hf-hub:ORG/REPO/FILE[@REVISION]``."""
        body = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
        body, _, revision = body.partition("@")
        parts = body.split("/")
        if len(parts) < 3 or not all(parts):
            raise ValueError(f"weights {spec!r}: expected 'hf-hub:ORG/REPO/FILE[@REVISION]'")
        return cls("/".join(parts[:2]), "/".join(parts[2:]), revision or None)

    def __str__(self) -> str:
        return f"{HUB_PREFIX}{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")


def resolve_weights(
    weights: WeightsSpec = None,
    *,
    revision: Optional[str] = None,
    cache_dir: Union[str, os.PathLike, None] = None,
    local_files_only: bool = False,
    default: HubFile = HubFile(),
    option: str = "weights",
) -> Path:
    """Returns the local path of a checkpoint, downloading it from the Hub once if needed.

    Args:
        weights: ``None`` for ``default`` (the official ``QualiCLIP.pth``), ``hf-hub:ORG/REPO/FILE[@REVISION]``,
            or a local ``.pth`` / ``.safetensors`` path.
        revision: Hub branch, tag or commit to pin (overrides nothing: it must agree with an ``@REVISION``).
        cache_dir: Hugging Face cache folder; default ``HF_HUB_CACHE`` / ``~/.cache/huggingface/hub``.
        local_files_only: Never touch the network; use the Hub cache only.
        default: The Hub file used when ``weights`` is ``None`` (a model preset's file).
        option: The argument name the messages use for this file (``weights``, ``prompt_weights``).

    Raises:
        WeightsNotFoundError: A local path does not exist, or the Hub file is neither cached nor downloadable.
        ValueError: A malformed ``hf-hub:`` spec, or two different revisions.
    """
    if weights is not None and not (isinstance(weights, str) and weights.startswith(HUB_PREFIX)):
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"{option} file not found: {path}")
        return path
    hub_file = default if weights is None else HubFile.parse(weights)
    if revision is not None:
        if hub_file.revision not in (None, revision):
            raise ValueError(f"{option} {str(weights or hub_file)!r} pins revision {hub_file.revision!r} but "
                             f"revision={revision!r}")
        hub_file = HubFile(hub_file.repo_id, hub_file.filename, revision)
    return _download(hub_file, cache_dir=cache_dir, local_files_only=local_files_only, option=option)


def _download(hub_file: HubFile, *, cache_dir, local_files_only: bool, option: str = "weights") -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(
            hf_hub_download(
                repo_id=hub_file.repo_id,
                filename=hub_file.filename,
                revision=hub_file.revision,
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                library_name="qualiclip-infer",
                library_version=__version__,
            )
        )
    except LocalEntryNotFoundError as error:
        raise WeightsNotFoundError(
            f"{hub_file} is not in the Hugging Face cache and could not be downloaded"
            f"{' (offline mode)' if local_files_only else ''}. Run once with network access, set HF_ENDPOINT to a "
            f"reachable mirror, or pass a local checkpoint path as {option}."
        ) from error
    except (EntryNotFoundError, HfHubHTTPError, OSError) as error:
        raise WeightsNotFoundError(f"{hub_file} could not be downloaded: {first_line(error)}") from error
    except Exception as error:  # the HTTP client's own errors (connection reset, timeouts) vary by version
        raise WeightsNotFoundError(f"{hub_file} could not be downloaded: {type(error).__name__}: "
                                   f"{first_line(error)}") from error


def file_sha256(path: Union[str, os.PathLike]) -> str:
    """SHA-256 of a file's bytes.

    A file in the Hugging Face cache is a link to ``blobs/<ETag>``, and the ETag of a Git LFS file (every weights
    file) is the SHA-256 of its bytes: that name is used instead of reading 400 MB (about a second) on every load.
    """
    target = Path(path).resolve()
    if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
