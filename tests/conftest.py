"""Shared fixtures: datasets are built once per session and copied per test."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support import factory


@pytest.fixture(scope="session")
def dataset_cache(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Path]:
    """``build(shape, version)`` -> a pristine dataset path, built at most once per session."""
    root = tmp_path_factory.mktemp("datasets")
    built: dict[tuple[str, str], Path] = {}

    def build(shape: str, version: str) -> Path:
        key = (shape, version)
        if key not in built:
            path = root / f"{shape}-{version}.lance"
            factory.SHAPES[shape](path, version)
            built[key] = path
        return built[key]

    return build


@pytest.fixture
def dataset_copy(dataset_cache: Callable[[str, str], Path], tmp_path: Path) -> Callable[[str, str], Path]:
    """``copy(shape, version)`` -> a private copy a test may modify or corrupt."""

    def copy(shape: str, version: str) -> Path:
        dst = tmp_path / f"{shape}-{version}.lance"
        shutil.copytree(dataset_cache(shape, version), dst)
        return dst

    return copy


# --- a real S3 API on loopback (moto's server mode) ---------------------------------------
class S3Endpoint:
    """A moto S3 server on 127.0.0.1 and the options pylance, s3fs and boto3 need to reach it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.key, self.secret, self.region = "testing", "testing", "us-east-1"

    @property
    def pylance_options(self) -> dict[str, str]:
        """pylance (object_store) spelling; lance_assets translates these too."""
        return {
            "aws_access_key_id": self.key,
            "aws_secret_access_key": self.secret,
            "aws_endpoint": self.url,
            "aws_region": self.region,
            "allow_http": "true",
        }

    @property
    def fsspec_options(self) -> dict[str, object]:
        """s3fs spelling."""
        return {"key": self.key, "secret": self.secret, "client_kwargs": {"endpoint_url": self.url, "region_name": self.region}}

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=self.key, aws_secret_access_key=self.secret, region_name=self.region
        )

    def new_bucket(self) -> str:
        import uuid

        name = f"test-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_endpoint() -> S3Endpoint:
    """One moto S3 server for the session, listening on 127.0.0.1 only (a free port)."""
    import logging
    import socket

    moto_server = pytest.importorskip("moto.server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Endpoint(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    """A local Ray instance for one test module (never ``ray stop``: it kills every Ray on the machine)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()
