"""The S3 back end of ``Storage``: the calls s3fs offers beyond the generic fsspec interface.

S3 needs its own handling in four places, all kept here so the facade stays store-neutral:
pylance (object_store) spells S3 options differently from s3fs, so one options dict is
translated for both; committing needs a create-if-absent, which S3 offers as a conditional PUT
(``If-None-Match: *``) that some S3-compatible servers silently ignore, hence a probe; deleting
thousands of files one request each is slow, hence DeleteObjects batches; and a writer killed
mid-file leaves an invisible but billed multipart upload behind, hence listing and aborting them.
The multipart writer itself (with server-side copies of ranges) is ``multipart.py``.

These functions take fsspec paths (``bucket/key``) and raise what s3fs raises (``OSError`` and
its subclasses) or typed errors from a create passed in; the facade translates and names objects.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

from lance_assets.errors import AlreadyExistsError, StorageError

# pylance (object_store) spells S3 options differently from s3fs; accept both so one
# dict configures pylance and lance_assets alike. s3fs spellings win when both are given.
_S3_CREDENTIAL_KEYS = {
    "aws_access_key_id": "key",
    "access_key_id": "key",
    "aws_secret_access_key": "secret",
    "secret_access_key": "secret",
    "aws_session_token": "token",
    "session_token": "token",
}
#: Connections s3fs's client may keep open to the store (botocore's default is 10).
POOL_CONNECTIONS = 256
_S3_ENDPOINT_KEYS = ("aws_endpoint", "aws_endpoint_url", "endpoint", "endpoint_url")
_S3_REGION_KEYS = ("aws_region", "region", "aws_default_region")
_S3_IGNORED_KEYS = (
    "allow_http",
    "aws_allow_http",
    "aws_virtual_hosted_style_request",
    "virtual_hosted_style_request",
    "aws_s3_allow_unsafe_rename",
)


def translate_options(options: dict[str, Any]) -> dict[str, Any]:
    """s3fs options from a dict that may use pylance's names (``aws_access_key_id``,
    ``aws_endpoint``, ``aws_region`` …); options that only matter to object_store are dropped."""
    out = dict(options)
    client_kwargs = dict(out.pop("client_kwargs", None) or {})
    for src, dst in _S3_CREDENTIAL_KEYS.items():
        if src in out:
            value = out.pop(src)
            out.setdefault(dst, value)
    for key in _S3_ENDPOINT_KEYS:
        if key in out:
            client_kwargs.setdefault("endpoint_url", out.pop(key))
    for key in _S3_REGION_KEYS:
        if key in out:
            client_kwargs.setdefault("region_name", out.pop(key))
    for key in _S3_IGNORED_KEYS:
        out.pop(key, None)
    if client_kwargs:
        out["client_kwargs"] = client_kwargs
    # botocore keeps at most 10 connections unless told otherwise, which would cap the requests
    # in flight (``max_concurrent_requests``, the part uploads) at 10 whatever was asked for;
    # connections are opened only as requests need them
    config = dict(out.get("config_kwargs") or {})
    config.setdefault("max_pool_connections", POOL_CONNECTIONS)
    out["config_kwargs"] = config
    return out


def has_raw_calls(fs: Any, protocols: Sequence[str]) -> bool:
    """Whether ``fs`` exposes the raw S3 calls (s3fs's ``call_s3``) the multipart writer,
    bulk deletes and upload listings need."""
    return "s3" in protocols and callable(getattr(fs, "call_s3", None))


def head_exists(fs: Any, path: str) -> bool:
    """Whether the object at ``path`` exists: one HEAD (s3fs's ``exists`` lists the prefix too
    when the object is missing, to find a folder)."""
    bucket, key = fs.split_path(path)[:2]
    try:
        fs.call_s3("head_object", dict(getattr(fs, "req_kw", None) or {}), Bucket=bucket, Key=key)
    except FileNotFoundError:
        return False
    return True


def has_conditional_put(fs: Any) -> bool:
    """Whether ``fs.pipe_file(mode="create")`` is an atomic conditional PUT.

    fsspec's generic ``pipe_file(mode="create")`` is "exists? then write" (racy), so only
    implementations known to send ``If-None-Match: *`` count: s3fs's.
    """
    try:
        from s3fs import S3FileSystem
    except ImportError:
        return False
    return isinstance(fs, S3FileSystem)


def put_if_absent(fs: Any, path: str, data: bytes) -> None:
    """Create ``path`` with a conditional PUT; FileExistsError if the object exists."""
    fs.pipe_file(path, data, mode="create")


def probe_if_none_match(create: Callable[[str, bytes], None], delete: Callable[[str], None]) -> str | None:
    """Check that the server honours ``If-None-Match`` (old S3-compatible servers ignore it).

    Creates a probe object below ``_versions/`` twice with ``create`` (the facade's conditional
    put); the second create must be refused. A store that accepts it would let two writers
    commit the same version. The probe is removed with ``delete`` in every case.

    Returns None when the server honours the header, else the probe's name (relative to the
    dataset root) that it let be created twice. Raises StorageError when the probe cannot run
    (the store rejects the conditional write, or the probe object existed already).
    """
    probe = f"_versions/.lance-assets-probe-{uuid.uuid4().hex}"
    refused_second = False
    try:
        create(probe, b"probe")
        try:
            create(probe, b"probe")
        except AlreadyExistsError:
            refused_second = True
    except AlreadyExistsError as exc:
        raise StorageError("conditional-write probe object already existed", path=exc.path) from None
    except StorageError as exc:
        raise StorageError(f"the store rejected a conditional (If-None-Match) write: {exc.reason}", path=exc.path) from None
    finally:
        with contextlib.suppress(Exception):
            delete(probe)
    return None if refused_second else probe


def delete_objects(fs: Any, paths: list[str]) -> None:
    """Delete ``paths`` in one DeleteObjects request (s3fs's ``rm`` of a list; at most 1000 keys),
    missing objects ignored."""
    try:
        fs.rm(paths)
    except FileNotFoundError:
        pass


class Upload(NamedTuple):
    """An unfinished multipart upload as S3 lists it: its key below the listed prefix."""

    name: str
    upload_id: str
    initiated: float | None


def multipart_uploads(fs: Any, dir_path: str) -> Iterator[Upload]:
    """Unfinished multipart uploads below the folder ``dir_path`` (all pages of the listing)."""
    bucket, prefix = fs.split_path(dir_path)[:2]
    prefix = prefix.rstrip("/") + "/"
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = fs.call_s3("list_multipart_uploads", **kwargs)
        for upload in page.get("Uploads", []):
            initiated = upload.get("Initiated")
            yield Upload(
                name=upload["Key"][len(prefix) :],
                upload_id=upload["UploadId"],
                initiated=initiated.timestamp() if isinstance(initiated, _dt.datetime) else None,
            )
        if not page.get("IsTruncated"):
            return
        kwargs["KeyMarker"] = page.get("NextKeyMarker")
        kwargs["UploadIdMarker"] = page.get("NextUploadIdMarker")


def abort_upload(fs: Any, path: str, upload_id: str) -> None:
    """Abort the multipart upload ``upload_id`` that would create ``path``."""
    bucket, key = fs.split_path(path)[:2]
    fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)


def describe_client_error(exc: BaseException) -> str | None:
    """One line for an error of the S3 client stack (botocore, aiohttp) that s3fs lets through
    instead of turning it into an ``OSError``: missing credentials, an endpoint that does not
    answer, a bad endpoint URL. None for anything else (a bug, not the store's answer)."""
    module = type(exc).__module__ or ""
    if not module.startswith(("botocore", "aiobotocore", "aiohttp")):
        return None
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError"):
        return (
            f"no usable S3 credentials ({exc}); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY or pass "
            "the storage options key and secret (or aws_access_key_id and aws_secret_access_key)"
        )
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError"):
        return f"cannot reach the S3 endpoint ({exc})"
    return f"{name}: {exc}"
