"""Where a run keeps what other processes read: a local directory or an object store URI.

On one machine every location is a local path. On a cluster, checkpoints, prepared data
and precomputed features must live where every node reads them (`s3://bucket/prefix`,
`gs://...`): a directory on one node's disk is not there on the others. pyarrow's
filesystems read both kinds, and Ray Train, Tune and Data take the same URIs. An
S3-compatible store other than AWS is chosen the way boto3 and pyarrow both read it:
`AWS_ENDPOINT_URL` (plus `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from emm_ray.errors import EmmError

NODE_CACHE_ENV = "EMM_NODE_CACHE"


class StorageError(EmmError):
    """A location cannot be reached or opened."""


def is_remote(location: str | Path) -> bool:
    """Whether `location` is a URI of a remote filesystem (not a local path or file://)."""
    scheme = urlparse(str(location)).scheme
    return len(scheme) > 1 and scheme != "file"  # a one-letter scheme is a Windows drive


def resolve(location: str | Path) -> str:
    """`location` as other processes can use it: an absolute path (also for `file://`
    URIs), or the URI as given."""
    if is_remote(location):
        return str(location).rstrip("/")
    parsed = urlparse(str(location))
    local = parsed.path if parsed.scheme == "file" else str(location)
    return str(Path(local).expanduser().absolute())


def join(location: str | Path, *parts: str) -> str:
    """`location` / `parts`, for paths and URIs alike."""
    if is_remote(location):
        return "/".join([str(location).rstrip("/"), *parts])
    return str(Path(resolve(location), *parts))


def filesystem(location: str | Path) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem holding `location` and the path inside it."""
    if is_remote(location):
        with reported(location):
            return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), resolve(location)


@contextmanager
def reported(location: str | Path) -> Iterator[None]:
    """Turn a filesystem's `OSError` (no such bucket, store unreachable, no permission)
    into a `StorageError` naming `location`."""
    try:
        yield
    except (OSError, pa.ArrowException) as exc:  # ArrowInvalid: a URI pyarrow cannot use
        hint = (
            "; for an S3-compatible store other than AWS, set AWS_ENDPOINT_URL and its "
            "credentials in every process's environment"
            if is_remote(location)
            else ""
        )
        raise StorageError(f"cannot use {location} ({exc}){hint}") from None


def read_bytes(location: str) -> bytes | None:
    """The file's contents, `None` if there is no such file."""
    with reported(location):
        fs, path = filesystem(location)
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.read()


def write_bytes(location: str, data: bytes) -> None:
    with reported(location):
        fs, path = filesystem(location)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)


def files_under(location: str) -> list[pafs.FileInfo]:
    """Every file below `location` (none if it does not exist), paths inside its filesystem."""
    with reported(location):
        fs, path = filesystem(location)
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        return [info for info in infos if info.type == pafs.FileType.File]


def upload(local_dir: Path, location: str) -> None:
    """Copy a local directory tree to `location`."""
    with reported(location):
        fs, path = filesystem(location)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(
            str(local_dir),
            path,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=fs,
        )


def download(location: str, local_dir: Path) -> None:
    """Copy the tree at `location` into a local directory."""
    with reported(location):
        fs, path = filesystem(location)
        local_dir.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(
            path,
            str(local_dir),
            source_filesystem=fs,
            destination_filesystem=pafs.LocalFileSystem(),
        )


def delete_dir(location: str) -> None:
    """Remove the tree at `location` if there is one."""
    with reported(location):
        fs, path = filesystem(location)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            fs.delete_dir(path)


def uri_of(fs: pafs.FileSystem, path: str, like: str) -> str:
    """The location of `path` inside `fs`, in the form of `like` (a URI or a local path)."""
    if not is_remote(like):
        return path
    return f"{urlparse(like).scheme}://{path}"


def node_cache(*parts: str) -> Path:
    """A directory on this node's own disk for local copies of remote data.

    One per Ray node (`EMM_NODE_CACHE`, default `~/.cache/emm-ray`, then the node id), so
    two nodes simulated on one machine never read each other's copies, as two machines
    could not.
    """
    from emm_ray.runtime import current_node

    root = Path(os.environ.get(NODE_CACHE_ENV, Path.home() / ".cache" / "emm-ray"))
    return root.joinpath(current_node()[:16], *parts)
