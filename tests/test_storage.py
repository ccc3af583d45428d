"""Input and output on a real S3-protocol server (moto's standalone server on 127.0.0.1, with IAM
authentication on): a run SIGKILLed mid-stage and resumed from the bucket alone ends identical to a
run that writes locally; `winnow verify` on the bucket passes and catches a tampered object; the
secret key is in no object written; a missing bucket and wrong credentials fail clearly."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import web_files

from winnow.pipeline.faults import fired, id_counts, lost_and_duplicated, output_files, run_cli

BUCKET = "winnow-test"
STAGES = [{"normalize": {}}, {"exact_dedup": {}}, {"heuristics": {"gopher_repetition": None, "fineweb_quality": None}}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server with IAM on; AWS env vars hold an IAM user's real (moto-issued) key pair."""
    import boto3
    from moto import settings

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
    from moto.server import ThreadedMotoServer

    endpoint = f"http://127.0.0.1:{free_port()}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(endpoint.rsplit(":", 1)[1]), verbose=False)
    server.start()
    saved_env = dict(os.environ)
    saved_auth = settings.INITIAL_NO_AUTH_ACTION_COUNT
    try:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = 3   # the three IAM calls below, then every request is checked
        boot = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="boot",
                    aws_secret_access_key="boot")
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="winnow")
        iam.put_user_policy(UserName="winnow", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="winnow")["AccessKey"]
        os.environ.update(AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"],
                          AWS_DEFAULT_REGION="us-east-1")
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        upload_inputs(client)
        yield {"endpoint": endpoint, "secret": key["SecretAccessKey"], "client": client}
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        settings.INITIAL_NO_AUTH_ACTION_COUNT = saved_auth
        server.stop()


def upload_inputs(client) -> None:
    """The same web text three ways: .jsonl.gz, .jsonl.zst and Parquet (read by byte ranges)."""
    import zstandard

    small, bigger = web_files(2)
    lines = Path(bigger).read_bytes().splitlines(keepends=True)
    client.put_object(Bucket=BUCKET, Key="in/a/usenet.jsonl.gz", Body=gzip.compress(Path(small).read_bytes(), mtime=0))
    client.put_object(Bucket=BUCKET, Key="in/b/pages.jsonl.zst",
                      Body=zstandard.ZstdCompressor().compress(b"".join(lines[:60])))
    rows = [json.loads(line) for line in lines[60:120]]
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink, row_group_size=30)
    client.put_object(Bucket=BUCKET, Key="in/c/pages.parquet", Body=sink.getvalue())


def config(s3: dict, output: str) -> dict:
    return {"input": {"paths": [f"s3://{BUCKET}/in/*/*.jsonl.*", f"s3://{BUCKET}/in/c/"], "shard_size_mb": 0.2},
            "output": output, "engine": {"n_workers": 1}, "storage_options": {"endpoint_url": s3["endpoint"]},
            "stages": STAGES}


def winnow(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "winnow", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def bucket_objects(s3: dict, prefix: str) -> dict[str, bytes]:
    client = s3["client"]
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for o in page.get("Contents", [])]
    return {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}


def test_run_on_a_bucket_killed_mid_stage_resumes_to_the_local_runs_output(s3, tmp_path, monkeypatch):
    from winnow.pipeline.remote_output import local_copy
    from winnow.pipeline.storage import configure

    # the same input, output on the local disk (its own cluster: the workers need the AWS variables)
    local_cfg = tmp_path / "local.yaml"
    local_cfg.write_text(yaml.safe_dump(config(s3, str(tmp_path / "local"))))
    assert run_cli(local_cfg) == 0

    url = f"s3://{BUCKET}/out/run"
    remote_cfg = tmp_path / "remote.yaml"
    remote_cfg.write_text(yaml.safe_dump(config(s3, url)))
    # killed after a heuristics shard's objects are put, before its marker (the commit)
    plan = {"point": "before_marker", "stage": "exact_dedup", "shard": "part-00002", "action": "kill_run"}
    assert run_cli(remote_cfg, plan, env={"WINNOW_SCRATCH_DIR": str(tmp_path / "scratch1")}) == -9
    assert fired(remote_cfg)
    written = bucket_objects(s3, "out/run/02-exact_dedup/")
    assert "out/run/02-exact_dedup/train-00002.parquet" in written            # put, not committed
    assert "out/run/02-exact_dedup/_shards/part-00002.json" not in written
    assert "out/run/02-exact_dedup/_manifest.json" not in written
    assert "out/run/01-normalize/_manifest.json" in bucket_objects(s3, "out/run/01-normalize/_manifest")
    # resumed on a "new machine": an empty scratch folder, so only the bucket's markers count
    assert run_cli(remote_cfg, env={"WINNOW_SCRATCH_DIR": str(tmp_path / "scratch2")}) == 0

    configure({"endpoint_url": s3["endpoint"]})
    monkeypatch.setenv("WINNOW_SCRATCH_DIR", str(tmp_path / "scratch3"))
    with local_copy(url) as copy:
        assert output_files(copy) == output_files(tmp_path / "local")
        assert lost_and_duplicated(id_counts(tmp_path / "local"), id_counts(copy)) == (0, 0)
        assert (copy / "dataset" / "state.json").is_file() and (copy / "_run.json").is_file()
        resolved = yaml.safe_load((copy / "config.resolved.yaml").read_text())
        assert resolved["storage_options"] == {"endpoint_url": s3["endpoint"]}

    objects = bucket_objects(s3, "out/")
    secret = s3["secret"].encode()
    for key, data in objects.items():   # Parquet is compressed: look inside it too
        text = data if not key.endswith(".parquet") else str(pq.read_table(io.BytesIO(data)).to_pylist()).encode()
        assert secret not in text, key

    env = {"WINNOW_SCRATCH_DIR": str(tmp_path / "scratch4")}
    # verify, stats and report read the bucket (endpoint from the standard chain's variable)
    env["AWS_ENDPOINT_URL"] = s3["endpoint"]
    done = winnow("verify", url, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout
    done = winnow("stats", url, "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert [s["stage"] for s in json.loads(done.stdout)["funnel"]][-1] in ("heuristics", "03-heuristics")
    done = winnow("report", url, env=env)   # written back beside the run
    assert done.returncode == 0 and done.stdout.strip() == f"{url}/report.html", done.stderr
    page = bucket_objects(s3, "out/run/report.html")["out/run/report.html"]
    assert b"<html" in page.lower() and secret not in page

    # one kept object replaced by a valid Parquet file with a row less: verify names it
    victim = "out/run/02-exact_dedup/train-00000.parquet"
    table = pq.read_table(io.BytesIO(objects[victim]))
    sink = io.BytesIO()
    pq.write_table(table.slice(1), sink)
    s3["client"].put_object(Bucket=BUCKET, Key=victim, Body=sink.getvalue())
    done = winnow("verify", url, env=env)
    assert done.returncode == 1
    assert f"s3://{BUCKET}/{victim}" in done.stdout


def test_missing_bucket_and_wrong_credentials_fail_clearly(s3, tmp_path):
    cfg = config(s3, "s3://no-such-bucket-here/out")
    path = tmp_path / "missing.yaml"
    path.write_text(yaml.safe_dump(cfg))
    done = winnow("run", str(path), "--quiet")
    assert done.returncode == 2, done.stderr
    assert "no-such-bucket-here" in done.stderr and "does not exist" in done.stderr

    path = tmp_path / "creds.yaml"
    path.write_text(yaml.safe_dump(config(s3, f"s3://{BUCKET}/out/creds")))
    done = winnow("run", str(path), "--quiet", env={"AWS_SECRET_ACCESS_KEY": "not-the-secret"})
    assert done.returncode == 2, done.stderr
    assert BUCKET in done.stderr and "access denied" in done.stderr
    assert "not-the-secret" not in done.stderr

    done = winnow("verify", "s3://no-such-bucket-here/out", env={"AWS_ENDPOINT_URL": s3["endpoint"]})
    assert done.returncode == 2 and "no-such-bucket-here" in done.stderr, done.stderr


def test_transient_errors_are_retried_and_then_name_bucket_and_key():
    from winnow.pipeline.errors import StorageError
    from winnow.pipeline.storage import retry

    class SlowDown(OSError):
        response = {"Error": {"Code": "SlowDown"}, "ResponseMetadata": {"HTTPStatusCode": 503}}

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise SlowDown("please reduce your request rate")
        return "ok"

    assert retry(flaky, "s3://b/k", "read", attempts=4) == "ok" and len(calls) == 3

    def always():
        raise SlowDown("please reduce your request rate")

    with pytest.raises(StorageError, match=r"bucket 'b', key 'some/key'.*gave up after 2 attempts"):
        retry(always, "s3://b/some/key", "write", attempts=2)
    with pytest.raises(StorageError, match="access denied to bucket 'b'"):
        retry(lambda: (_ for _ in ()).throw(PermissionError("denied")), "s3://b/k", "read")


def test_eval_inputs_and_models_on_a_bucket_are_fetched_once_into_the_cache(s3, tmp_path, monkeypatch):
    import glob

    from winnow.cli.eval import localized
    from winnow.models.loading import resolve_model
    from winnow.pipeline.storage import configure
    from winnow.proxy.evaluate import EvalConfig

    monkeypatch.setenv("WINNOW_CACHE_DIR", str(tmp_path / "cache"))
    configure({"endpoint_url": s3["endpoint"]})
    small, bigger = web_files(2)
    for i, f in enumerate((small, bigger)):
        s3["client"].put_object(Bucket=BUCKET, Key=f"held/set/part-{i}.jsonl", Body=Path(f).read_bytes())
    cfg = localized(EvalConfig.model_validate({
        "arms": {"curated": f"s3://{BUCKET}/held/set/part-0.jsonl", "local": small}, "output": str(tmp_path / "e"),
        "heldout": {"web": {"paths": [f"s3://{BUCKET}/held/set/*.jsonl"]}}}))
    assert cfg.arms["local"] == small
    assert Path(cfg.arms["curated"]).read_bytes() == Path(small).read_bytes()
    matched = sorted(glob.glob(cfg.heldout["web"].paths[0]))
    assert [Path(m).read_bytes() for m in matched] == [Path(small).read_bytes(), Path(bigger).read_bytes()]

    model = resolve_model(f"s3://{BUCKET}/held/set/part-1.jsonl")   # any object: a .gguf is fetched the same way
    assert Path(model).read_bytes() == Path(bigger).read_bytes()
    assert str(tmp_path / "cache") in model
    s3["client"].put_object(Bucket=BUCKET, Key="held/set/part-1.jsonl", Body=b"changed\n")
    again = resolve_model(f"s3://{BUCKET}/held/set/part-1.jsonl")   # a changed object is fetched again
    assert again != model and Path(again).read_bytes() == b"changed\n"

    from winnow.raters.reference_lm import reference_path  # the perplexity/prune reference model too

    reference = reference_path(f"s3://{BUCKET}/held/set/part-0.jsonl")
    assert str(tmp_path / "cache") in reference and Path(reference).read_bytes() == Path(small).read_bytes()
