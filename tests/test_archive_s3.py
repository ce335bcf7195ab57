"""Archives on S3, through a real S3 server (moto's server mode on loopback)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from loader.sync.pipeline import Loader
from tests.helpers import snapshot


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    saved = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def s3_archive(s3_endpoint: str, sample_archive: Path) -> str:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="segment-bucket")
    for path in sample_archive.rglob("*.gz"):
        s3.upload_file(str(path), "segment-bucket", str(path.relative_to(sample_archive)))
    return "s3://segment-bucket/segment-logs/"


def test_s3_prefix_loads_like_the_local_archive(
    open_wh, s3_endpoint: str, s3_archive: str, sample_archive: Path
) -> None:
    wh = open_wh()
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    report = Loader(wh, batch_lines=2000, storage_options=options).load(s3_archive, "from_s3")
    assert report.files_loaded == report.files_seen > 1
    assert all(f.startswith("s3://") for f in wh.loaded_files("from_s3"))
    Loader(wh, batch_lines=2000).load(str(sample_archive / "segment-logs"), "from_disk")
    assert snapshot(wh, "from_s3") == snapshot(wh, "from_disk")
    rerun = Loader(wh, storage_options=options).load(s3_archive, "from_s3")
    assert rerun.files_loaded == 0 and rerun.files_skipped == report.files_seen


def test_cli_reads_s3_with_the_standard_endpoint_variable(
    s3_endpoint: str, s3_archive: str, tmp_path: Path
) -> None:
    (tmp_path / "profiles.yml").write_text(
        f"default_target: t\ntargets:\n  t:\n    type: duckdb\n    path: {tmp_path / 'x.duckdb'}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "loader.cli.app", "load", s3_archive, "--schema", "web"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "AWS_ENDPOINT_URL": s3_endpoint, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    assert "success" in result.stdout and "tracks" in result.stdout
