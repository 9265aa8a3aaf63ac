"""Operator mistakes through the real console script: one ``error:`` line and exit 2, never a
traceback (issue 26) -- S3 without credentials or with an endpoint that does not answer, an
unsupported protocol, and option values out of range (named by their flag, under the usage line
of the subcommand they belong to)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import factory
from tests.support.assertions import assert_one_error_line, tree_digest
from tests.support.cli import run_cli

COMMANDS = ["inspect", "compact", "cleanup"]


def cli(*argv: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    done = run_cli(*argv, env=env or dict(os.environ))
    return done.returncode, done.stdout, done.stderr


def no_credentials_env() -> dict[str, str]:
    """The environment without any AWS credentials botocore could find (variables, files, the
    instance metadata service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k == "AWS_CA_BUNDLE"}
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        COLUMNS="200",
    )
    return env


@pytest.fixture(scope="module")
def s3_uri(s3_endpoint) -> str:  # type: ignore[no-untyped-def]
    """A real dataset in a moto bucket on loopback, written by pylance."""
    bucket = s3_endpoint.new_bucket()
    uri = f"s3://{bucket}/events.lance"
    factory.appends(uri, "2.1", [40, 30, 20], storage_options=s3_endpoint.pylance_options)
    return uri


@pytest.mark.parametrize("command", COMMANDS)
def test_s3_without_credentials(s3_endpoint, s3_uri: str, command: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(command, s3_uri, "--storage-option", f"endpoint_url={s3_endpoint.url}", env=no_credentials_env())
    assert_one_error_line(code, out, err)
    assert "credentials" in err and s3_uri in err
    # the same dataset with credentials: the command works (the error was about them alone)
    code, out, err = cli(command, s3_uri, "--json", *_options(s3_endpoint), "--dry-run" if command != "inspect" else "--json")
    assert code == 0, err
    assert json.loads(out)


def _options(s3_endpoint) -> list[str]:  # type: ignore[no-untyped-def]
    pairs = {"key": s3_endpoint.key, "secret": s3_endpoint.secret, "endpoint_url": s3_endpoint.url, "region": s3_endpoint.region}
    return [arg for k, v in pairs.items() for arg in ("--storage-option", f"{k}={v}")]


@pytest.mark.parametrize(
    ("command", "spelling"), [("inspect", "client_kwargs"), ("compact", "aws_endpoint"), ("cleanup", "client_kwargs")]
)
def test_s3_endpoint_that_does_not_answer(command: str, spelling: str) -> None:
    """Port 1 on loopback refuses connections: the store cannot be reached, said in one line
    (after the S3 client's own retries: about 15 s)."""
    endpoint = "http://127.0.0.1:1"
    option = f'client_kwargs={{"endpoint_url": "{endpoint}"}}' if spelling == "client_kwargs" else f"aws_endpoint={endpoint}"
    code, out, err = cli(
        command,
        "s3://bucket/x.lance",
        "--storage-option",
        option,
        "--storage-option",
        "key=a",
        "--storage-option",
        "secret=b",
        env=no_credentials_env(),
    )
    assert_one_error_line(code, out, err)
    assert "cannot reach the S3 endpoint" in err and "127.0.0.1:1" in err


@pytest.mark.parametrize("command", COMMANDS)
def test_hdfs_is_refused_before_any_jvm_is_loaded(command: str) -> None:
    code, out, err = cli(command, "hdfs://namenode:8020/x.lance")
    assert_one_error_line(code, out, err)
    assert "hdfs:// is not supported" in err


# --- option values: the flag is named, under the subcommand's usage ---------------------------------
BAD_OPTIONS = [
    (["inspect", "--max-fragments", "-1"], "--max-fragments must not be negative"),
    (["inspect", "--target-rows-per-fragment", "0"], "--target-rows-per-fragment must be positive"),
    (["compact", "--target-rows-per-fragment", "0"], "--target-rows-per-fragment must be positive"),
    (["compact", "--max-rows-per-file", "-3"], "--max-rows-per-file must be positive when set"),
    (["compact", "--materialize-deletions-threshold", "2"], "--materialize-deletions-threshold must be between 0 and 1"),
    (["compact", "--materialize-deletions-threshold", "-0.1"], "--materialize-deletions-threshold must be between 0 and 1"),
    (["compact", "--dry-run", "--commit-every", "0"], "--commit-every must be positive when set"),
    (["cleanup", "--older-than", "-5d"], "--older-than: a duration cannot be negative"),
    (["cleanup", "--older-than=-5d"], "--older-than: a duration cannot be negative"),
    (["cleanup", "--older-than", "5x"], "--older-than: not a duration"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_option_out_of_range(dataset_copy: Callable[[str, str], Path], argv: list[str], message: str) -> None:
    path = dataset_copy("appends", "2.1")
    before = tree_digest(path)
    command, *flags = argv
    code, out, err = cli(command, str(path), *flags, env={**os.environ, "COLUMNS": "200"})
    assert code == 2 and out == "" and "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines[0].startswith(f"usage: lance-assets {command} ")
    assert lines[-1] == f"lance-assets {command}: error: {lines[-1].split(': error: ', 1)[1]}"
    assert message in lines[-1]
    assert "_" not in lines[-1].split(": error: ", 1)[1].split(" ")[0]  # a flag, not a Python field
    assert tree_digest(path) == before


def test_zero_max_fragments_lists_none(dataset_cache: Callable[[str, str], Path]) -> None:
    """0 is a valid answer to "how many fragments to list": none, and how many there are."""
    code, out, err = cli(
        "inspect", str(dataset_cache("appends", "2.1")), "--max-fragments", "0", env={**os.environ, "COLUMNS": "200"}
    )
    assert code == 0, err
    assert "4 more" in out
