"""Run folders and checkpoints on Tune's storage: a local folder or a `s3://...` URI.

A sweep on a cluster must not need a shared file system: each trial trains in
a folder local to its node and copies the finished run folder to the sweep's
storage, and reports read it back from there. pyarrow's file systems (the ones
Ray Tune itself uses) do the copying; a plain path is a local folder.

S3-compatible servers (MinIO, moto, ...) take pyarrow's URI options, e.g.
`s3://bucket/sweeps?endpoint_override=127.0.0.1:9000&scheme=http`; credentials
come from the usual AWS_* variables on every node.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ablate.core.errors import AblateError, first_line


def is_uri(location: str | Path) -> bool:
    """A `scheme://` location (s3, gs, ...) rather than a local path (`file://` is local)."""
    return "://" in str(location) and not str(location).startswith("file://")


def local_path(location: str | Path) -> Path:
    """A local location as an absolute path (a `file://` prefix dropped)."""
    return Path(str(location).removeprefix("file://")).expanduser().resolve()


def join(base: str, *parts: str) -> str:
    """`base/part/...`, keeping a URI's query (`?endpoint_override=...`) at the end."""
    if not is_uri(base):
        return str(local_path(base).joinpath(*parts))
    split = urlsplit(base)
    path = "/".join([split.path.rstrip("/"), *(p.strip("/") for p in parts)])
    return urlunsplit((split.scheme, split.netloc, path, split.query, ""))


def _fs(location: str):  # noqa: ANN202
    import pyarrow.fs

    try:
        return pyarrow.fs.FileSystem.from_uri(location)
    except (OSError, ValueError) as err:
        raise AblateError(f"cannot open storage {location}: {first_line(err)}; "
                          "check the URI, its endpoint and the AWS_* credentials") from None


def locate(fs_path: str, base: str) -> str:
    """A path inside `base`'s file system (as Tune reports checkpoints) as a location
    any node can open: an absolute path, or a URI with `base`'s scheme and query."""
    if not is_uri(base):
        return str(local_path(fs_path))
    _, root = _fs(base)
    return join(base, fs_path.removeprefix(root).lstrip("/"))


def upload_folder(local: Path, location: str) -> str:
    """Copy folder `local` to `location` (a path or URI); return where it now is."""
    if not is_uri(location):
        target = local_path(location)
        if target != local.resolve():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(local, target, dirs_exist_ok=True)
        return str(target.resolve())
    import pyarrow.fs

    fs, path = _fs(location)
    fs.create_dir(path, recursive=True)
    pyarrow.fs.copy_files(str(local), path, destination_filesystem=fs)
    return location


def download_folder(location: str, local: Path) -> Path:
    """Copy `location` (a path or URI) into folder `local`; return `local`."""
    local.mkdir(parents=True, exist_ok=True)
    if not is_uri(location):
        shutil.copytree(local_path(location), local, dirs_exist_ok=True)
        return local
    import pyarrow.fs

    fs, path = _fs(location)
    pyarrow.fs.copy_files(path, str(local), source_filesystem=fs)
    return local


def read_bytes(location: str) -> bytes:
    """The bytes of one file at a path or URI (FileNotFoundError when it is not there)."""
    if not is_uri(location):
        return local_path(location).read_bytes()
    import pyarrow.fs

    fs, path = _fs(location)
    if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def exists(location: str) -> bool:
    if not is_uri(location):
        return local_path(location).exists()
    import pyarrow.fs

    fs, path = _fs(location)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def check_writable(location: str) -> None:
    """Write and delete a probe file, so a bad --storage fails before any trial runs."""
    probe = join(location, ".ablate-probe")
    try:
        if not is_uri(location):
            local_path(location).mkdir(parents=True, exist_ok=True)
            Path(probe).write_text("ok")
            Path(probe).unlink()
            return
        fs, path = _fs(probe)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(b"ok")
        fs.delete_file(path)
    except OSError as err:
        raise AblateError(f"cannot write to storage {location}: {first_line(err)}; pass a writable "
                          "--storage (a folder, or s3://bucket/path with AWS_* credentials)"
                          ) from None
