"""Downloads against a local HTTP server on 127.0.0.1 (never the internet): checksums, resume, atomicity,
fast failure when unreachable, and the ``data fetch`` command."""

from __future__ import annotations

import functools
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from episodes.fetch import FETCHERS, RemoteFile, download, fetch_omniglot
from fewshot.cli.main import main
from fewshot.errors import DataError

PAYLOAD = bytes(range(256)) * 400  # 102 400 bytes
SPLIT_TEXT = "".join(f"Latin/character{i:02d}/rot000\n" for i in range(1, 6))


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    honour_range = True
    cut_after: int | None = None  # send only this many body bytes, then hang up (a dropped connection)
    log: list[tuple[str, str | None, int]] = []  # (path, Range header, bytes sent)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.files.get(self.path)
        rng = self.headers.get("Range")
        if body is None:
            self.log.append((self.path, rng, 0))  # logged before answering: the client may read the log next
            self.send_error(404)
            return
        start = 0
        if rng and self.honour_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.log.append((self.path, rng, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.log.append((self.path, rng, len(body) - start))
        self.end_headers()
        self.wfile.write(body[start:] if self.cut_after is None else body[start : start + self.cut_after])

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def server() -> Iterator[type[_Handler]]:
    """A threaded HTTP server on 127.0.0.1; configure it through the yielded handler class."""
    handler = type("Handler", (_Handler,), {"files": {}, "log": [], "honour_range": True, "cut_after": None})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    handler.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield handler
    httpd.shutdown()
    httpd.server_close()


def _remote(server, name: str = "data.zip", body: bytes = PAYLOAD, md5: str | None = "auto", lines=None) -> RemoteFile:
    server.files[f"/{name}"] = body
    digest = hashlib.md5(body).hexdigest() if md5 == "auto" else md5
    return RemoteFile(name, f"{server.base}/{name}", md5=digest, lines=lines)


def test_download_verifies_and_renames(server, tmp_path: Path) -> None:
    path = download(_remote(server), tmp_path)
    assert path == tmp_path / "data.zip" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "data.zip.part").exists()


def test_checksum_mismatch_leaves_no_file(server, tmp_path: Path) -> None:
    remote = _remote(server, md5=hashlib.md5(b"something else").hexdigest())
    with pytest.raises(DataError, match=r"corrupt: its md5 is [0-9a-f]{32}, expected"):
        download(remote, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_line_count_checks_files_without_checksum(server, tmp_path: Path) -> None:
    ok = _remote(server, "splits/vinyals/test.txt", SPLIT_TEXT.encode(), md5=None, lines=5)
    assert download(ok, tmp_path).read_text() == SPLIT_TEXT
    bad = _remote(server, "splits/vinyals/val.txt", SPLIT_TEXT.encode(), md5=None, lines=688)
    with pytest.raises(DataError, match="has 5 non-empty lines, expected 688"):
        download(bad, tmp_path)
    assert not (tmp_path / "splits" / "vinyals" / "val.txt").exists()


def test_resume_with_range(server, tmp_path: Path) -> None:
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD[:40000])
    download(_remote(server), tmp_path)
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD
    assert server.log == [("/data.zip", "bytes=40000-", len(PAYLOAD) - 40000)]  # only the rest was sent


def test_dropped_connection_keeps_the_part_and_the_next_run_resumes(server, tmp_path: Path) -> None:
    remote = _remote(server)
    server.cut_after = 30000
    with pytest.raises(DataError, match=r"(stopped after|interrupted after) 30000 .*run the command again to resume"):
        download(remote, tmp_path)
    assert (tmp_path / "data.zip.part").read_bytes() == PAYLOAD[:30000] and not (tmp_path / "data.zip").exists()
    server.cut_after = None
    download(remote, tmp_path)
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD
    assert server.log[-1] == ("/data.zip", "bytes=30000-", len(PAYLOAD) - 30000)


def test_server_without_range_restarts(server, tmp_path: Path) -> None:
    server.honour_range = False
    (tmp_path / "data.zip.part").write_bytes(b"x" * 40000)  # would be garbage if appended to
    download(_remote(server), tmp_path)
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD
    assert server.log == [("/data.zip", "bytes=40000-", len(PAYLOAD))]


def test_complete_part_is_finished_without_refetching(server, tmp_path: Path) -> None:
    (tmp_path / "data.zip.part").write_bytes(PAYLOAD)
    download(_remote(server), tmp_path)
    assert (tmp_path / "data.zip").read_bytes() == PAYLOAD
    assert [sent for _, _, sent in server.log] == [0]  # one 416 answer, no body


def test_existing_good_file_is_kept_and_bad_one_never_overwritten(server, tmp_path: Path) -> None:
    remote = _remote(server)
    (tmp_path / "data.zip").write_bytes(PAYLOAD)
    assert download(remote, tmp_path).read_bytes() == PAYLOAD
    assert server.log == []  # verified locally, no request
    (tmp_path / "data.zip").write_bytes(b"user data")
    with pytest.raises(DataError, match="is already there but its md5 is .* delete it and fetch again"):
        download(remote, tmp_path)
    assert (tmp_path / "data.zip").read_bytes() == b"user data"


def test_http_error_is_a_data_error(server, tmp_path: Path) -> None:
    remote = RemoteFile("missing.zip", f"{server.base}/missing.zip", md5=None)
    with pytest.raises(DataError, match="HTTP 404"):
        download(remote, tmp_path)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_fails_with_local_copy_hint(tmp_path: Path) -> None:
    remote = RemoteFile("data.zip", f"http://127.0.0.1:{_closed_port()}/data.zip", md5=None)
    with pytest.raises(DataError, match=r"cannot reach .*--data-root DIR \(or set FEWSHOT_DATA=DIR\).*shared/data"):
        download(remote, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        remote = RemoteFile("data.zip", f"http://127.0.0.1:{listener.getsockname()[1]}/data.zip", md5=None)
        with pytest.raises(DataError, match="timed out"):
            download(remote, tmp_path, timeout=0.2)


def test_fetch_omniglot_layout(server, tmp_path: Path) -> None:
    table = [
        _remote(server, "images_background.zip"),
        _remote(server, "splits/vinyals/train.txt", SPLIT_TEXT.encode(), None, 5),
    ]
    paths = fetch_omniglot(tmp_path / "root", files=table)
    assert paths == [
        tmp_path / "root" / "omniglot" / "images_background.zip",
        tmp_path / "root" / "omniglot" / "splits" / "vinyals" / "train.txt",
    ]


def test_cli_fetch(server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setitem(
        FETCHERS, "omniglot", functools.partial(fetch_omniglot, files=[_remote(server, "images_evaluation.zip")])
    )
    assert main(["data", "fetch", "omniglot", "--data-root", str(tmp_path)]) == 0
    assert (tmp_path / "omniglot" / "images_evaluation.zip").read_bytes() == PAYLOAD
    assert "1 files verified" in capsys.readouterr().out
    offline = [RemoteFile("x.zip", f"http://127.0.0.1:{_closed_port()}/x.zip")]
    monkeypatch.setitem(FETCHERS, "omniglot", functools.partial(fetch_omniglot, files=offline))
    assert main(["data", "fetch", "omniglot", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("error: cannot reach") and "FEWSHOT_DATA" in err[-1]
    assert main(["data", "fetch", "omniglot", "--data-root", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new" / "omniglot").exists()  # a failed first attempt leaves no empty folder


def test_cli_fetch_rejects_unknown_dataset(tmp_path: Path, capsys) -> None:
    assert main(["data", "fetch", "omniglott", "--data-root", str(tmp_path)]) == 2
    assert "did you mean 'omniglot'" in capsys.readouterr().err
