"""S3 reads without s3fs's per-request machinery: a presigned GET over a pooled connection.

A compaction reads every input file once, in one request, many in flight. Through s3fs every
such GET runs botocore's whole request pipeline on aiobotocore (parameter validation, a dozen
event handlers, signing, response parsing): about 3.5 ms of CPU per request on this machine,
where the store's answer takes 20 ms of waiting but no CPU. With thousands of small inputs that
CPU, not the store, sets the pace. Here a GET is signed as a presigned URL by a plain botocore
client (SigV4 in the query string: nothing to sign but the host, so the ``Range`` header can be
added) and sent with urllib3: about 0.9 ms of CPU. The same credentials (taken from s3fs's own
client, refreshed), endpoint, region and addressing style are used, so the request reaches
the object s3fs would.

Only the plain case is taken here: a GET answered with the bytes asked for, or a missing
object (``FileNotFoundError``, as s3fs raises it). Any other answer (a refused object, a
throttle, a server error, a network error) returns None and the caller makes the same read
through s3fs, whose retries and error translation then apply,
so an error costs one request more and never changes what the caller sees. After a few failures
in a row the direct path turns itself off for that store. Stores configured beyond
credentials, endpoint and region (custom TLS verification, requester pays, customer keys…) are
never read this way.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

logger = logging.getLogger(__name__)

#: s3fs options this reader reproduces; a store configured with any other is read by s3fs alone.
_PLAIN_OPTIONS = frozenset({"key", "secret", "token", "anon", "profile", "client_kwargs", "config_kwargs"})
_PLAIN_CLIENT_KWARGS = frozenset({"endpoint_url", "region_name"})
_PLAIN_CONFIG_KWARGS = frozenset({"max_pool_connections"})
#: Failures in a row after which a store is read by s3fs alone.
MAX_FAILURES = 3
#: How long frozen credentials are used before they are asked for again (refreshable
#: credentials renew themselves well before they expire).
CREDENTIALS_SECONDS = 300.0
#: Validity of one presigned URL: it is used at once, for one request.
URL_SECONDS = 900


def plain(options: Mapping[str, Any]) -> bool:
    """Whether a store opened with these s3fs options (the filesystem's ``storage_options``) is
    one this reader reaches exactly as s3fs does."""
    if not set(options) <= _PLAIN_OPTIONS:
        return False
    client = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    return set(client) <= _PLAIN_CLIENT_KWARGS and set(config) <= _PLAIN_CONFIG_KWARGS


class DirectReads:
    """Presigned GETs for one s3fs filesystem (``fs``), at most ``connections`` open at once."""

    def __init__(self, fs: Any, connections: int) -> None:
        self._fs = fs
        self._connections = connections
        self._lock = threading.Lock()
        self._client: Any = None
        self._pool: Any = None
        self._credentials: Any = None
        self._credentials_at = 0.0
        self._failures = 0
        self.enabled = True

    def read(self, path: str, start: int | None, end: int | None) -> bytes | None:
        """Bytes ``[start, end)`` of the object at ``path`` (``bucket/key``; whole without a
        range), or None when this reader does not answer (the caller asks s3fs)."""
        if not self.enabled or (start is not None and start < 0) or (end is not None and end < 0):
            return None
        bucket, _, key = path.partition("/")
        if not bucket or not key:
            return None
        first = start or 0
        if end is not None and end <= first:
            return b""
        try:
            client, pool = self._session()
            url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=URL_SECONDS)
            headers = {}
            if first or end is not None:
                headers["Range"] = f"bytes={first}-" + (str(end - 1) if end is not None else "")
            response = pool.request("GET", url, headers=headers, preload_content=True, redirect=False)
        except Exception as exc:  # a network or signing problem: s3fs makes this read
            self._failed(f"{type(exc).__name__}: {exc}")
            return None
        data: bytes = response.data
        if response.status == 206 and (end is None or len(data) <= end - first):
            self._succeeded()
            return data
        if response.status == 200 and not headers:
            self._succeeded()
            return data
        if response.status == 200:  # the server ignored the range: the whole object came
            self._succeeded()
            return data[first:end]
        if response.status == 404:  # what s3fs raises for an absent object, without asking again
            raise FileNotFoundError(errno.ENOENT, "no such object", path)
        if response.status not in (403, 416):  # refused objects and ranges are s3fs's to name
            self._failed(f"HTTP {response.status}")
        return None

    def _session(self) -> tuple[Any, Any]:
        """The signing client and the connection pool, made on first use; the client is made
        again when s3fs's credentials have changed."""
        now = time.monotonic()
        with self._lock:
            if self._client is not None and now - self._credentials_at < CREDENTIALS_SECONDS:
                return self._client, self._pool
            credentials = _frozen_credentials(self._fs)
            if self._client is None or credentials != self._credentials:
                self._client = _signing_client(self._fs, credentials)
            if self._pool is None:
                self._pool = _pool(self._connections)
            self._credentials, self._credentials_at = credentials, now
            return self._client, self._pool

    def _succeeded(self) -> None:
        self._failures = 0

    def _failed(self, why: str) -> None:
        with self._lock:
            self._failures += 1
            if self._failures >= MAX_FAILURES and self.enabled:
                self.enabled = False
                logger.info("S3 reads go through s3fs alone now: %d direct reads failed in a row (%s)", self._failures, why)


def _frozen_credentials(fs: Any) -> Any:
    """s3fs's client's credentials as they are now (None: anonymous)."""
    from fsspec.asyn import sync

    credentials = fs.s3._request_signer._credentials  # (``s3`` connects on first use)
    if credentials is None:
        return None
    return sync(fs.loop, credentials.get_frozen_credentials)


def _signing_client(fs: Any, credentials: Any) -> Any:
    """A plain botocore S3 client that only signs: s3fs's endpoint, region and addressing style,
    SigV4 (or unsigned for anonymous access), with ``credentials``. It shares s3fs's loaded
    service models, so it costs a few milliseconds."""
    import botocore.session
    from botocore import UNSIGNED
    from botocore.config import Config

    meta = fs.s3.meta
    session = botocore.session.Session()
    session.register_component("data_loader", fs.session.get_component("data_loader"))
    signature = UNSIGNED if credentials is None else "s3v4"
    config = Config(signature_version=signature, s3=meta.config.s3, region_name=meta.region_name)
    keys: dict[str, Any] = {}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials.access_key,
            "aws_secret_access_key": credentials.secret_key,
            "aws_session_token": credentials.token,
        }
    # the endpoint only when one was configured: otherwise botocore resolves AWS's own for the
    # region and bucket (virtual-hosted addressing), as it does for s3fs's client
    endpoint = (getattr(fs, "client_kwargs", None) or {}).get("endpoint_url")
    return session.create_client("s3", region_name=meta.region_name, endpoint_url=endpoint, config=config, **keys)


def _pool(connections: int) -> Any:
    """Pooled connections, verifying TLS against the certificates botocore uses."""
    import urllib3
    from botocore.httpsession import get_cert_path

    ca = os.environ.get("AWS_CA_BUNDLE") or get_cert_path(True)
    return urllib3.PoolManager(
        num_pools=8,
        maxsize=max(1, connections),
        block=False,
        retries=False,
        timeout=urllib3.Timeout(connect=10.0, read=60.0),
        cert_reqs="CERT_REQUIRED",
        ca_certs=ca if isinstance(ca, str) else None,
    )
