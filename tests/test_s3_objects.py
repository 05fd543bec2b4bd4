"""Whole objects on real S3 servers (SeaweedFS and moto, on loopback): the public calls
given ``s3://`` URLs write all or nothing, refuse what has no meaning there, name the URL
in their errors, and answer truthfully when a response is lost (the fault proxy drops it
after the server committed the write)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import crashsafe
from crashsafe import validators
from crashsafe.objectstore import S3Store
from tests.harness.s3proxy import fault_proxy, mutating
from tests.harness.s3servers import S3Place, Server

LARGE = (64 << 20) + 12345  # above the single-PUT limit: a multipart upload


def body(place: S3Place, key: str) -> bytes:
    return place.endpoint.client().get_object(Bucket=place.bucket, Key=key)["Body"].read()


def keys(place: S3Place) -> list[str]:
    listed = place.endpoint.client().list_objects_v2(Bucket=place.bucket)
    return sorted(o["Key"] for o in listed.get("Contents", []))


def uploads(place: S3Place) -> list[Any]:
    return place.endpoint.client().list_multipart_uploads(Bucket=place.bucket).get("Uploads", [])


def user_keys(place: S3Place) -> list[str]:
    """The bucket's keys, without crashsafe's own bookkeeping under .crashsafe/."""
    return [k for k in keys(place) if not k.startswith(".crashsafe/")]


def pattern(n: int) -> bytes:
    """n bytes that differ at every 4 KiB, so a shifted or mixed copy shows."""
    block = hashlib.sha256(str(n).encode()).digest() * 128
    return (block * (n // len(block) + 1))[:n]


# ---------------------------------------------------------------------------- atomic_write


def test_atomic_write_replaces_an_object_and_create_only_refuses_an_existing_key(
    s3: S3Place,
) -> None:
    url = s3.url("dir/state.bin")
    crashsafe.atomic_write(url, b"one")
    crashsafe.atomic_write(url, "two")
    assert body(s3, "dir/state.bin") == b"two"
    with pytest.raises(FileExistsError) as info:
        crashsafe.atomic_write(url, b"three", overwrite=False)
    assert info.value.errno == errno.EEXIST
    assert info.value.filename == url
    assert body(s3, "dir/state.bin") == b"two"
    crashsafe.atomic_write(s3.url("new.bin"), b"fresh", overwrite=False)
    assert body(s3, "new.bin") == b"fresh"


def test_a_validator_that_rejects_keeps_the_old_object_and_names_the_url(s3: S3Place) -> None:
    url = s3.url("doc.json")
    crashsafe.atomic_write(url, b'{"ok": true}')
    with pytest.raises(crashsafe.VerificationError) as info:
        crashsafe.atomic_write(url, b'{"cut', validate=validators.json)
    assert info.value.filename == url
    assert body(s3, "doc.json") == b'{"ok": true}'


@pytest.mark.parametrize(
    ("option", "word"),
    [({"perm": 0o600}, "perm"), ({"durability": "none"}, "durability"),
     ({"follow_symlinks": False}, "follow_symlinks")],
)  # fmt: skip
def test_local_options_are_refused_for_a_url_before_anything_is_written(
    s3: S3Place, option: dict[str, Any], word: str
) -> None:
    url = s3.url("k")
    with pytest.raises(ValueError, match=word) as info:
        crashsafe.atomic_write(url, b"x", **option)
    assert url in str(info.value)
    with pytest.raises(ValueError, match=word), crashsafe.atomic_open(url, "wb", **option):
        pass  # pragma: no cover - refused on entry
    assert user_keys(s3) == []


def test_store_for_a_local_path_and_foreign_schemes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="s3:// URLs only"):
        crashsafe.atomic_write(tmp_path / "f", b"x", store=S3Store())
    with pytest.raises(ValueError, match="gs://"):
        crashsafe.atomic_write("gs://bucket/key", b"x")
    with pytest.raises(ValueError, match="no key"):
        crashsafe.atomic_write("s3://bucket", b"x")
    with pytest.raises(ValueError, match="prefix"):
        crashsafe.atomic_write("s3://bucket/dir/", b"x")
    assert list(tmp_path.iterdir()) == []


def test_plain_http_needs_to_be_allowed(s3: S3Place, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ALLOW_HTTP")
    with pytest.raises(ValueError, match="AWS_ALLOW_HTTP"):
        crashsafe.atomic_write(s3.url("k"), b"x")
    crashsafe.atomic_write(s3.url("k"), b"x", store=S3Store(allow_http=True))
    assert body(s3, "k") == b"x"


def test_errors_name_the_url_missing_bucket_and_wrong_keys(
    s3: S3Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = f"s3://{s3.bucket}-missing/k"  # (a PUT there: SeaweedFS makes the bucket)
    with pytest.raises(FileNotFoundError, match="no bucket") as info:
        crashsafe.read_json(missing)
    assert info.value.filename == missing
    with pytest.raises(FileNotFoundError) as info:
        crashsafe.read_json(s3.url("absent.json"))
    assert info.value.filename == s3.url("absent.json")
    if s3.endpoint.name == "seaweedfs":  # moto accepts any keys
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
        with pytest.raises(PermissionError) as denied:
            crashsafe.atomic_write(s3.url("k"), b"x")
        assert denied.value.filename == s3.url("k")


def test_the_environment_is_read_at_each_call(
    s3: S3Place, moto_server: Server, seaweedfs_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = moto_server if s3.endpoint.name == "seaweedfs" else seaweedfs_server
    client = other.endpoint.client()
    client.create_bucket(Bucket=s3.bucket)
    try:
        crashsafe.atomic_write(s3.url("where"), b"first")
        for key, value in other.endpoint.env().items():
            monkeypatch.setenv(key, value)
        crashsafe.atomic_write(s3.url("where"), b"second")
        assert body(s3, "where") == b"first"
        assert client.get_object(Bucket=s3.bucket, Key="where")["Body"].read() == b"second"
    finally:
        client.delete_object(Bucket=s3.bucket, Key="where")
        client.delete_bucket(Bucket=s3.bucket)


# ---------------------------------------------------------------------------- atomic_open


def test_atomic_open_text_and_binary_and_an_exception_keeps_the_old_object(s3: S3Place) -> None:
    url = s3.url("t.txt")
    with crashsafe.atomic_open(url, "w", newline="\r\n") as f:
        f.write("héllo\n")
    assert body(s3, "t.txt") == "héllo\r\n".encode()
    with pytest.raises(RuntimeError), crashsafe.atomic_open(url, "wb") as b:
        b.write(b"half")
        raise RuntimeError("the block failed")
    assert body(s3, "t.txt") == "héllo\r\n".encode()
    with pytest.raises(FileExistsError), crashsafe.atomic_open(url, "x") as f:
        f.write("never")
    assert body(s3, "t.txt") == "héllo\r\n".encode()
    with pytest.raises(ValueError, match="append"), crashsafe.atomic_open(url, "ab"):
        pass  # pragma: no cover - refused on entry
    assert uploads(s3) == []


def test_a_large_object_goes_in_parts_and_create_only_still_holds(s3: S3Place) -> None:
    data = pattern(LARGE)
    url = s3.url("big.bin")
    with crashsafe.atomic_open(url, "xb") as f:
        f.write(data)
    assert body(s3, "big.bin") == data
    with pytest.raises(FileExistsError), crashsafe.atomic_open(url, "xb") as f:
        f.write(b"x" * LARGE)
    assert hashlib.sha256(body(s3, "big.bin")).digest() == hashlib.sha256(data).digest()
    assert uploads(s3) == []
    assert not [k for k in keys(s3) if k.startswith(".crashsafe/uploads/")]


# ---------------------------------------------------------------------------- atomic_copy


def test_atomic_copy_to_and_from_a_store_with_digest_and_progress(
    s3: S3Place, tmp_path: Path
) -> None:
    data = pattern(LARGE)
    src = tmp_path / "artifact"
    src.write_bytes(data)
    seen: list[tuple[int, int | None]] = []
    up = crashsafe.atomic_copy(
        src, s3.url("a/artifact"), digest="sha256", progress=lambda d, t: seen.append((d, t))
    )
    assert up == (LARGE, "multipart", hashlib.sha256(data).hexdigest())
    assert seen[-1] == (LARGE, LARGE)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    dst = tmp_path / "back"
    down = crashsafe.atomic_copy(s3.url("a/artifact"), dst, perm=0o640, digest="sha256")
    assert down == (LARGE, "download", hashlib.sha256(data).hexdigest())
    assert dst.read_bytes() == data
    assert dst.stat().st_mode & 0o777 == 0o640
    small = crashsafe.atomic_copy(s3.url("a/artifact"), s3.url("b/copy"))
    assert small.method == "multipart"
    assert body(s3, "b/copy") == data


def test_atomic_copy_validates_a_local_artifact_before_it_is_published(
    s3: S3Place, tmp_path: Path
) -> None:
    src = tmp_path / "cut.zst"
    src.write_bytes(b"(\xb5/\xfd\x04\x00")  # a zstd frame header, then nothing
    crashsafe.atomic_write(s3.url("cut.zst"), b"old")
    with pytest.raises(crashsafe.VerificationError):
        crashsafe.atomic_copy(src, s3.url("cut.zst"), validate=validators.zstd)
    assert body(s3, "cut.zst") == b"old"
    with pytest.raises(crashsafe.VerificationError):
        crashsafe.atomic_copy(src, s3.url("cut.zst"), validate=validators.sha256("0" * 64))
    assert body(s3, "cut.zst") == b"old"
    assert uploads(s3) == []


def test_a_download_that_does_not_validate_leaves_the_local_file(
    s3: S3Place, tmp_path: Path
) -> None:
    crashsafe.atomic_write(s3.url("bad.json"), b'{"cut')
    dst = tmp_path / "doc.json"
    dst.write_bytes(b"{}")
    with pytest.raises(crashsafe.VerificationError):
        crashsafe.atomic_copy(s3.url("bad.json"), dst, validate=validators.json)
    assert dst.read_bytes() == b"{}"
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]


# ---------------------------------------------------------------------------- documents


def test_json_documents_and_updates(s3: S3Place) -> None:
    url = s3.url("state.json")
    assert crashsafe.read_json(url, default=None) is None
    with pytest.raises(FileNotFoundError):
        crashsafe.update_json(url, lambda d: d)
    crashsafe.write_json(url, {"n": 1, "name": "café"})
    assert crashsafe.read_json(url) == {"n": 1, "name": "café"}
    assert crashsafe.update_json(url, lambda d: {**d, "n": d["n"] + 1}) == {"n": 2, "name": "café"}
    with pytest.raises(TypeError, match="returned None"):
        crashsafe.update_json(url, lambda d: d.update(n=0))
    assert crashsafe.read_json(url)["n"] == 2
    default: dict[str, list[int]] = {"items": []}
    crashsafe.update_json(s3.url("new.json"), lambda d: d["items"].append(1) or d, default=default)
    assert default == {"items": []}
    assert crashsafe.update(s3.url("raw"), lambda b: b + b"!", default=b"hi") == b"hi!"
    assert crashsafe.update(s3.url("raw"), lambda b: b + b"!") == b"hi!!"


def test_a_damaged_document_is_never_replaced_by_update_json(s3: S3Place) -> None:
    url = s3.url("broken.json")
    crashsafe.atomic_write(url, b'{"n": 1')
    with pytest.raises(crashsafe.JSONDocumentError) as info:
        crashsafe.update_json(url, lambda d: {"n": 0}, default={"n": 0})
    assert info.value.filename == url
    assert body(s3, "broken.json") == b'{"n": 1'


# ---------------------------------------------------------------------------- lost answers


def test_a_create_whose_answer_is_lost_is_recognised_as_ours(s3: S3Place) -> None:
    with fault_proxy(s3.endpoint) as proxy:
        proxy.ghost(match=lambda m, p, q: m == "PUT" and p.endswith("/mine"))
        store = S3Store(endpoint_url=proxy.endpoint.url)
        crashsafe.atomic_write(s3.url("mine"), b"landed", overwrite=False, store=store)
    assert body(s3, "mine") == b"landed"
    assert [e.action for e in proxy.log if e.path.endswith("/mine")][:1] == ["ghost"]


def test_an_update_whose_answer_is_lost_is_applied_once(s3: S3Place) -> None:
    url = s3.url("count.json")
    crashsafe.write_json(url, {"n": 0})
    with fault_proxy(s3.endpoint) as proxy:
        proxy.ghost(match=lambda m, p, q: m == "PUT" and p.endswith("/count.json"), times=3)
        store = S3Store(endpoint_url=proxy.endpoint.url)
        for _ in range(3):
            crashsafe.update_json(url, lambda d: {"n": d["n"] + 1}, store=store)
    assert crashsafe.read_json(url) == {"n": 3}


def test_evidence_overwritten_by_a_foreign_writer_is_reported_not_guessed(s3: S3Place) -> None:
    """Our create lands but its answer is lost; before we read back, a writer that is not
    crashsafe replaces the object. Nothing shows whether ours landed: say so."""
    url = s3.url("contested")
    with fault_proxy(s3.endpoint) as proxy:
        proxy.ghost(match=lambda m, p, q: m == "PUT" and p.endswith("/contested"))
        readback = proxy.hold(match=lambda m, p, q: m == "HEAD" and p.endswith("/contested"))
        store = S3Store(endpoint_url=proxy.endpoint.url)
        errors: list[BaseException] = []

        def write() -> None:
            try:
                crashsafe.atomic_write(url, b"ours", overwrite=False, store=store)
            except BaseException as e:  # handed to the test's thread
                errors.append(e)

        writer = threading.Thread(target=write)
        writer.start()
        readback.wait()
        s3.endpoint.client().put_object(Bucket=s3.bucket, Key="contested", Body=b"foreign")
        readback.release("forward")
        writer.join()
    assert len(errors) == 1
    assert isinstance(errors[0], crashsafe.AmbiguousWriteError)
    assert errors[0].filename == url
    assert body(s3, "contested") == b"foreign"


def test_writes_are_sent_once_by_the_client(s3: S3Place) -> None:
    """A reset PUT reaches the server zero times and is sent again by crashsafe after it
    read the key back, never by the client library on its own."""
    with fault_proxy(s3.endpoint) as proxy:
        proxy.reset(match=lambda m, p, q: m == "PUT" and p.endswith("/once"))
        store = S3Store(endpoint_url=proxy.endpoint.url)
        crashsafe.atomic_write(s3.url("once"), b"v", overwrite=False, store=store)
    sent = [(e.method, e.action) for e in proxy.log if e.path.endswith("/once")]
    assert sent == [("PUT", "reset"), ("HEAD", "forward"), ("PUT", "forward")]
    assert not [e for e in proxy.log if mutating(e.method, e.path, e.query) and "probe" in e.path
                and e.action != "forward"]  # fmt: skip


# ---------------------------------------------------------------------------- sweep


def test_sweep_of_a_clean_prefix_removes_nothing_and_checks_min_age(s3: S3Place) -> None:
    crashsafe.atomic_write(s3.url("p/k"), b"x")
    assert crashsafe.sweep(s3.url("p/"), min_age=0) == []
    with pytest.raises(ValueError, match="min_age"):
        crashsafe.sweep(s3.url("p/"), min_age=-1)
    assert user_keys(s3) == ["p/k"]


def test_sweep_aborts_a_recorded_upload_and_never_a_foreign_one(s3: S3Place) -> None:
    from crashsafe.objectstore._client import client_for
    from crashsafe.objectstore._upload import record_url
    from crashsafe.objectstore._url import parse

    client = s3.endpoint.client()
    foreign = client.create_multipart_upload(Bucket=s3.bucket, Key="p/foreign")["UploadId"]
    # What a writer killed after recording its upload leaves (the kill itself is proved in
    # tests/test_s3_faults.py): an upload and its record.
    ours = client.create_multipart_upload(Bucket=s3.bucket, Key="p/ours")["UploadId"]
    record = record_url(s3.bucket, ours)
    client.put_object(
        Bucket=s3.bucket,
        Key=record.key,
        Body=json.dumps({"key": "p/ours", "upload_id": ours}).encode(),
    )
    assert crashsafe.sweep(s3.url("p/"), min_age=3600) == []
    assert crashsafe.sweep(s3.url("p/"), dry_run=True, min_age=0) == [
        f"{s3.url('p/ours')} (upload {ours})"
    ]
    assert crashsafe.sweep(s3.url("p/"), min_age=0) == [f"{s3.url('p/ours')} (upload {ours})"]
    assert [u["UploadId"] for u in uploads(s3)] == [foreign]
    assert record.key not in keys(s3)
    assert client_for(None, s3.url("p/")) is client_for(None, s3.url("p/"))
    assert parse(s3.url("p/ours")).key == "p/ours"
    client.abort_multipart_upload(Bucket=s3.bucket, Key="p/foreign", UploadId=foreign)


def test_no_temporary_file_is_left_in_tmpdir(
    s3: S3Place, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with crashsafe.atomic_open(s3.url("t"), "wb") as f:
        f.write(b"x" * 1000)
        assert os.listdir(tmp_path) == []  # anonymous from the start
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- local-only calls


def test_calls_that_write_local_files_refuse_a_url_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="local files only"):
        crashsafe.AtomicFile("s3://bucket/key")
    with pytest.raises(ValueError, match="compare-and-swap"):
        crashsafe.FileLock("s3://bucket/key")
    with pytest.raises(ValueError, match="local files only"):
        crashsafe.write_many({"s3://bucket/key": b"x"})
    crashsafe.atomic_write(tmp_path / "s3:", b"a Path is never a URL")
    assert (tmp_path / "s3:").read_bytes() == b"a Path is never a URL"


# ---------------------------------------------------------------------------- command line


def cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "crashsafe", *args],
        input=stdin,
        capture_output=True,
        check=False,
        timeout=120,
    )


def test_the_command_line_writes_copies_and_sweeps_objects(s3: S3Place, tmp_path: Path) -> None:
    done = cli("write", s3.url("c/doc.json"), "--validate", "json", stdin=b'{"a": 1}')
    assert done.returncode == 0, done.stderr
    assert body(s3, "c/doc.json") == b'{"a": 1}'
    refused = cli("write", s3.url("c/doc.json"), "--create-only", stdin=b"{}")
    assert refused.returncode == 4
    assert s3.url("c/doc.json").encode() in refused.stderr
    rejected = cli("write", s3.url("c/doc.json"), "--validate", "json", stdin=b'{"cut')
    assert rejected.returncode == 1
    assert body(s3, "c/doc.json") == b'{"a": 1}'
    copied = cli("copy", "-", s3.url("c/piped"), stdin=pattern(100_000))
    assert copied.returncode == 0, copied.stderr
    assert body(s3, "c/piped") == pattern(100_000)
    back = cli("copy", s3.url("c/piped"), str(tmp_path / "piped"), "--json")
    assert json.loads(back.stdout)["method"] == "download"
    assert (tmp_path / "piped").read_bytes() == pattern(100_000)
    swept = cli("sweep", s3.url("c/"), "--json")
    assert json.loads(swept.stdout)["orphans"] == []
    perm = cli("write", s3.url("c/x"), "--perm", "600", stdin=b"x")
    assert perm.returncode == 2
    assert b"perm" in perm.stderr


# ---------------------------------------------------------------------------- the verdicts
# After a lost answer crashsafe reads the key back and decides from the writers' tokens;
# each case below stops that read-back (a held request) while another writer acts.


def race_during_readback(
    s3: S3Place,
    key: str,
    *,
    fault: str,
    readback: str,
    skip: int,
    call: Callable[[S3Store], Any],
    meanwhile: Callable[[], object],
) -> tuple[Any, BaseException | None]:
    """Run *call(store)* through the proxy with its first PUT of *key* faulted, hold its
    read-back (*readback* method, after *skip* such requests), run *meanwhile()* against
    the server directly, release, and return what *call* returned or raised."""
    outcome: list[Any] = [None, None]
    with fault_proxy(s3.endpoint) as proxy:
        is_put = lambda m, p, q: m == "PUT" and p.endswith("/" + key)  # noqa: E731
        (proxy.ghost if fault == "ghost" else proxy.reset)(match=is_put)
        hold = proxy.hold(match=lambda m, p, q: m == readback and p.endswith("/" + key), skip=skip)
        store = S3Store(endpoint_url=proxy.endpoint.url)

        def run() -> None:
            try:
                outcome[0] = call(store)
            except BaseException as e:  # handed to the test's thread
                outcome[1] = e

        writer = threading.Thread(target=run)
        writer.start()
        hold.wait()
        meanwhile()
        hold.release("forward")
        writer.join()
    return outcome[0], outcome[1]


def test_a_create_that_did_not_land_before_another_writer_created_the_key_is_refused(
    s3: S3Place,
) -> None:
    url = s3.url("first")
    _, error = race_during_readback(
        s3,
        "first",
        fault="reset",
        readback="HEAD",
        skip=0,
        call=lambda store: crashsafe.atomic_write(url, b"ours", overwrite=False, store=store),
        meanwhile=lambda: crashsafe.atomic_write(url, b"theirs", overwrite=False),
    )
    assert isinstance(error, FileExistsError)
    assert body(s3, "first") == b"theirs"


def test_an_update_that_landed_and_was_built_upon_is_not_applied_again(s3: S3Place) -> None:
    """The ghost conflict with a twist: our increment landed, its answer was lost, and
    another writer's increment landed on top before we looked. Our token is deeper in
    the history, not on top: still ours, so the result is 2, not 3 or 1."""
    url = s3.url("n.json")
    crashsafe.write_json(url, {"n": 0})
    result, error = race_during_readback(
        s3,
        "n.json",
        fault="ghost",
        readback="HEAD",
        skip=0,
        call=lambda store: crashsafe.update_json(url, lambda d: {"n": d["n"] + 1}, store=store),
        meanwhile=lambda: crashsafe.update_json(url, lambda d: {"n": d["n"] + 1}),
    )
    assert error is None
    assert result == {"n": 1}  # what this call wrote
    assert crashsafe.read_json(url) == {"n": 2}


def test_an_update_that_did_not_land_is_applied_on_the_newer_version(s3: S3Place) -> None:
    url = s3.url("m.json")
    crashsafe.write_json(url, {"n": 0})
    result, error = race_during_readback(
        s3,
        "m.json",
        fault="reset",
        readback="HEAD",
        skip=0,
        call=lambda store: crashsafe.update_json(url, lambda d: {"n": d["n"] + 1}, store=store),
        meanwhile=lambda: crashsafe.update_json(url, lambda d: {"n": d["n"] + 10}),
    )
    assert error is None
    assert result == {"n": 11}
    assert crashsafe.read_json(url) == {"n": 11}


def test_an_update_whose_evidence_a_foreign_writer_erased_is_reported(s3: S3Place) -> None:
    url = s3.url("f.json")
    crashsafe.write_json(url, {"n": 0})
    client = s3.endpoint.client()
    _, error = race_during_readback(
        s3,
        "f.json",
        fault="ghost",
        readback="HEAD",
        skip=0,
        call=lambda store: crashsafe.update_json(url, lambda d: {"n": d["n"] + 1}, store=store),
        meanwhile=lambda: client.put_object(Bucket=s3.bucket, Key="f.json", Body=b'{"n": 5}'),
    )
    assert isinstance(error, crashsafe.AmbiguousWriteError)
    assert crashsafe.read_json(url) == {"n": 5}


def test_a_child_forked_while_another_thread_held_the_client_lock_still_works(
    s3: S3Place,
) -> None:
    from crashsafe.objectstore import _client

    crashsafe.atomic_write(s3.url("parent"), b"parent")  # the parent's pool is in use
    with _client._lock:  # as if another thread were making a client at the fork
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its status
            signal.alarm(60)  # a hang ends the child by SIGALRM, and the test fails
            try:
                crashsafe.atomic_write(s3.url("child"), b"child", overwrite=False)
            finally:
                os._exit(0 if body(s3, "child") == b"child" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    crashsafe.atomic_write(s3.url("parent"), b"again")
    assert body(s3, "parent") == b"again"


def test_a_probe_whose_answer_is_lost_probes_again_on_a_new_object(s3: S3Place) -> None:
    with fault_proxy(s3.endpoint) as proxy:
        # The second probe request: the create-only PUT that must be refused; its 412 lost.
        proxy.ghost(match=lambda m, p, q: m == "PUT" and "/.crashsafe/probe/" in p, skip=1)
        store = S3Store(endpoint_url=proxy.endpoint.url)
        crashsafe.atomic_write(s3.url("after-probe"), b"v", overwrite=False, store=store)
        with pytest.raises(FileExistsError):
            crashsafe.atomic_write(s3.url("after-probe"), b"w", overwrite=False, store=store)
    probes = {e.path for e in proxy.log if "/.crashsafe/probe/" in e.path}
    assert len(probes) == 2  # the first probe object, and the one probed afresh
    assert user_keys(s3) == ["after-probe"]
    assert body(s3, "after-probe") == b"v"
