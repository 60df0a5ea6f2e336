"""weights/manifest.json and `python -m weights.fetch` against a real HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.tools.ports import free_port
from weights import fetch

REPO_ROOT = Path(__file__).resolve().parents[2]
OFFICIAL = "https://github.com/WongKinYiu/yolov7/releases/download/v0.1"
VARIANTS = ("yolov7-tiny", "yolov7", "yolov7x", "yolov7-w6", "yolov7-e6", "yolov7-d6", "yolov7-e6e")
PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)  # not a multiple of the chunk size
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ----- a real file server ---------------------------------------------------------------------------
class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self):  # noqa: N802
                server.requests.append(self.path)
                if self.path.startswith("/short/"):  # announces the whole file, sends half, hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    self.wfile.write(PAYLOAD[: len(PAYLOAD) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/release"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "srv"
    (root / "release").mkdir(parents=True)
    (root / "release" / "yolov7-tiny.pt").write_bytes(PAYLOAD)
    (root / "release" / "yolov7x.pt").write_bytes(PAYLOAD)
    with _Server(root) as srv:
        yield srv


def _manifest(tmp_path: Path, *, sha: str | None = PAYLOAD_SHA, size: int | None = len(PAYLOAD)) -> Path:
    """The real manifest with the tiny entry overridden to the fake file's hash."""
    data = json.loads(fetch.MANIFEST_PATH.read_text())
    for entry in data["weights"]:
        if entry["name"] == "yolov7-tiny":
            entry["sha256"], entry["size"] = sha, size
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(data))
    return path


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = fetch.main(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.endswith(".part"))


# ----- the manifest itself ---------------------------------------------------------------------------
def test_manifest_lists_every_official_variant() -> None:
    manifest = fetch.load_manifest()
    assert tuple(manifest.entries) == VARIANTS
    assert manifest.url_base == OFFICIAL
    for entry in manifest.entries.values():
        assert entry.file == f"{entry.name}.pt" and entry.variant == entry.name
        assert entry.sha256 is None or len(entry.sha256) == 64 and int(entry.sha256, 16) >= 0
        assert entry.input_size == (1280 if entry.name[-2:] in ("w6", "e6", "d6") or entry.name.endswith("e6e")
                                    else 640)
    assert manifest.entries["yolov7"].size == 75_587_165
    assert manifest.entries["yolov7"].sha256 == "d1ac3c74eb96a3eec77949c0f37a06bc272756606ff011d9353f7abff4e0c71d"
    assert manifest.entries["yolov7-tiny"].size == 12_639_769
    assert manifest.entries["yolov7-tiny"].sha256 == "0fa1423606133c06362ec716029dade1169d5631e83195b75d8efa66d2ee0b77"


def test_manifest_variants_match_predictor_settings() -> None:
    from predictor.settings import VARIANT_NAMES

    assert tuple(fetch.load_manifest().entries) == VARIANT_NAMES


# ----- downloads -------------------------------------------------------------------------------------
def test_download_verifies_and_installs_then_skips(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    code, out, err = _run("yolov7-tiny", "--dest", str(dest), "--url-base", server.url,
                          "--manifest", str(_manifest(tmp_path)))
    assert code == 0, err
    installed = dest / "yolov7-tiny.pt"
    assert installed.read_bytes() == PAYLOAD
    assert "verified" in out and _leftovers(dest) == []
    assert server.requests == ["/release/yolov7-tiny.pt"]

    code, out, _ = _run("yolov7-tiny.pt", "--dest", str(dest), "--url-base", server.url,
                        "--manifest", str(_manifest(tmp_path)))
    assert code == 0 and "already present and verified" in out
    assert server.requests == ["/release/yolov7-tiny.pt"]  # not downloaded again


def test_mirror_from_environment(tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(fetch.URL_BASE_ENV, server.url)
    dest = tmp_path / "weights"
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--manifest", str(_manifest(tmp_path)))
    assert code == 0, err
    assert server.requests == ["/release/yolov7-tiny.pt"]
    assert fetch.sha256_file(dest / "yolov7-tiny.pt") == PAYLOAD_SHA


def test_hash_mismatch_leaves_nothing_behind(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--url-base", server.url,
                        "--manifest", str(_manifest(tmp_path, sha="0" * 64)))
    assert code == 1
    assert "sha256" in err and PAYLOAD_SHA in err and "0" * 64 in err
    assert not (dest / "yolov7-tiny.pt").exists() and _leftovers(dest) == []


def test_size_mismatch_is_reported_before_hashing(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--url-base", server.url,
                        "--manifest", str(_manifest(tmp_path, size=len(PAYLOAD) + 1)))
    assert code == 1 and "size" in err and f"{len(PAYLOAD) + 1:,}" in err
    assert list(dest.iterdir()) == []


def test_corrupted_existing_file_is_replaced(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    dest.mkdir()
    (dest / "yolov7-tiny.pt").write_bytes(b"truncated")
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--url-base", server.url,
                        "--manifest", str(_manifest(tmp_path)))
    assert code == 0 and "does not verify" in err
    assert (dest / "yolov7-tiny.pt").read_bytes() == PAYLOAD


def test_unreachable_server_explains_how_to_provide_the_file(tmp_path: Path) -> None:
    dest = tmp_path / "weights"
    base = f"http://127.0.0.1:{free_port()}/release"
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--url-base", base, "--timeout", "5",
                        "--manifest", str(_manifest(tmp_path)))
    assert code == 1
    assert "cannot reach the weights release" in err
    assert f"{base}/yolov7-tiny.pt" in err
    assert "--from-file" in err and str(dest / "yolov7-tiny.pt") in err and fetch.URL_BASE_ENV in err
    assert list(dest.iterdir()) == []


def test_broken_off_download_leaves_nothing_behind(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    base = server.url.replace("/release", "/short")
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--url-base", base, "--timeout", "10",
                        "--manifest", str(_manifest(tmp_path)))
    assert code == 1 and "broke off" in err and "--from-file" in err
    assert list(dest.iterdir()) == []


def test_file_url_mirror(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    base = (server.root / "release").as_uri()
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--url-base", base,
                        "--manifest", str(_manifest(tmp_path)))
    assert code == 0, err
    assert fetch.sha256_file(dest / "yolov7-tiny.pt") == PAYLOAD_SHA and server.requests == []


def test_http_error_is_reported(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    code, _, err = _run("yolov7", "--dest", str(dest), "--url-base", server.url)  # not served: 404
    assert code == 1 and "HTTP 404" in err and "--from-file" in err
    assert list(dest.iterdir()) == []


def test_unpinned_hash_needs_trust_on_first_use(tmp_path: Path, server: _Server) -> None:
    dest = tmp_path / "weights"
    code, _, err = _run("yolov7x", "--dest", str(dest), "--url-base", server.url)
    assert code == 1 and "--trust-on-first-use" in err and PAYLOAD_SHA in err
    assert list(dest.iterdir()) == []

    code, out, err = _run("yolov7x", "--dest", str(dest), "--url-base", server.url, "--trust-on-first-use")
    assert code == 0, err
    assert PAYLOAD_SHA in out and (dest / "yolov7x.pt").read_bytes() == PAYLOAD


# ----- --from-file -----------------------------------------------------------------------------------
def test_from_file_copies_and_verifies(tmp_path: Path) -> None:
    source = tmp_path / "Downloads" / "yolov7-tiny.pt"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    dest = tmp_path / "weights"
    code, out, err = _run("yolov7-tiny", "--dest", str(dest), "--from-file", str(source),
                          "--manifest", str(_manifest(tmp_path)))
    assert code == 0, err
    assert (dest / "yolov7-tiny.pt").read_bytes() == PAYLOAD and source.exists()
    assert _leftovers(dest) == []


def test_from_file_rejects_a_wrong_file(tmp_path: Path) -> None:
    source = tmp_path / "yolov7-tiny.pt"
    source.write_bytes(PAYLOAD[:-1] + bytes([PAYLOAD[-1] ^ 0xFF]))  # the last byte always differs
    dest = tmp_path / "weights"
    code, _, err = _run("yolov7-tiny", "--dest", str(dest), "--from-file", str(source),
                        "--manifest", str(_manifest(tmp_path)))
    assert code == 1 and "sha256" in err, (code, err)
    assert list(dest.iterdir()) == []


def test_from_file_needs_one_name(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as raised:
        _run("yolov7", "yolov7-tiny", "--from-file", str(tmp_path / "x.pt"), "--dest", str(tmp_path))
    assert raised.value.code == 2


def test_unknown_name_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        fetch.main(["yolov9"])
    assert raised.value.code == 2
    assert "yolov7-e6e" in capsys.readouterr().err


# ----- the real command line -------------------------------------------------------------------------
def test_cli_module_exit_status_when_offline(tmp_path: Path) -> None:
    env = dict(os.environ, YOLO_WEIGHTS_URL_BASE=f"http://127.0.0.1:{free_port()}/x")
    result = subprocess.run(
        [sys.executable, "-m", "weights.fetch", "yolov7", "--dest", str(tmp_path), "--timeout", "5"],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert "cannot reach the weights release" in result.stderr
    assert "python -m weights.fetch yolov7 --from-file" in result.stderr


# ----- file modes: an image or volume runs the predictor under another (arbitrary) UID -----------------
@pytest.mark.parametrize("how", ["download", "from-file"])
def test_installed_files_are_world_readable(tmp_path: Path, server: _Server, how: str) -> None:
    source = tmp_path / "Downloads" / "yolov7-tiny.pt"
    source.parent.mkdir()
    source.write_bytes(PAYLOAD)
    source.chmod(0o600)
    dest = tmp_path / "weights"
    extra = ("--url-base", server.url) if how == "download" else ("--from-file", str(source))
    old = os.umask(0o077)  # even under a strict umask (the temporary file starts as mkstemp's 0600)
    try:
        code, _, err = _run("yolov7-tiny", "--dest", str(dest), *extra, "--manifest", str(_manifest(tmp_path)))
    finally:
        os.umask(old)
    assert code == 0, err
    assert (dest / "yolov7-tiny.pt").stat().st_mode & 0o777 == fetch.FILE_MODE == 0o644
