"""`report --serve`: the page (and the atlas it links), nothing else, only for 127.0.0.1 / localhost."""

from __future__ import annotations

import html
import http.client
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from test_report import xss_model

import featuremaps as fm
from featuremaps.report.serve import ReportServer, ServeError, report_files, serve_report

SECRET = "top secret: never served"
TESTS = Path(__file__).resolve().parent


def get(port: int, path: str, host: str | None = "default", method: str = "GET", extra: tuple = ()) -> tuple:
    """One raw request (the path and Host exactly as given); returns (status, headers, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    if host == "default":
        host = f"127.0.0.1:{port}"
    if host is not None:
        conn.putheader("Host", host)
    for name, value in extra:
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A saved report among a user's files: a secret, a sub-folder, links to / and to the secret."""
    d = tmp_path_factory.mktemp("served")
    page = fm.report(xss_model(), fm.sample_image("coffee"), cam_methods=None).save(d / "report.html")
    (d / "secret.txt").write_text(SECRET)
    (d / "sub").mkdir()
    (d / "sub" / "inner.html").write_text(SECRET)
    (d / "root").symlink_to("/")
    (d / "evil.html").symlink_to(d / "secret.txt")
    return d, page


@pytest.fixture()
def server(folder):
    _, page = folder
    with serve_report(page).start() as s:
        yield s


def test_the_page_is_served_with_its_csp(server, folder):
    _, page = folder
    status, headers, body = get(server.port, "/report.html")
    assert status == 200 and body == page.read_bytes()
    assert headers["Content-Type"] == "text/html; charset=utf-8" and headers["X-Content-Type-Options"] == "nosniff"
    csp = re.search(rb'http-equiv="Content-Security-Policy" content="([^"]+)"', body)
    assert csp is not None and "default-src 'none'" in html.unescape(csp.group(1).decode())
    assert server.url() == f"http://127.0.0.1:{server.port}/report.html"
    status, headers, body = get(server.port, "/report.html", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) == page.stat().st_size
    assert get(server.port, "/report.html", host=f"localhost:{server.port}")[0] == 200


@pytest.mark.parametrize("path", [
    "/", "/secret.txt", "/sub", "/sub/", "/sub/inner.html", "/evil.html", "/root/etc/passwd", "/root/etc/shadow",
    "/root/", "/../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt", "/report.html/../secret.txt",
    "/./secret.txt", "//secret.txt", "/report.html%00", "/%72eport.html/..", "/%ff", "secret.txt", "*",
])
def test_nothing_else_is_served(server, path):
    status, _, body = get(server.port, path)
    assert status == 404, path
    assert SECRET.encode() not in body and b"root:" not in body and b"secret" not in body.lower()
    assert b"Directory listing" not in body and b"report.html" not in body


@pytest.mark.parametrize("host", [
    "evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost", "127.0.0.1", "[::1]:{port}",
    "0.0.0.0:{port}", "127.0.0.1:{port}.evil.example", None,
])
def test_other_hosts_are_refused(server, host):
    h = host.format(port=server.port) if host is not None else None
    status, _, body = get(server.port, "/report.html", host=h)
    assert status == 403 and b"report-data" not in body


def test_two_host_headers_or_an_absolute_url_for_another_host_are_refused(server):
    port = server.port
    assert get(port, "/report.html", extra=(("Host", "evil.example"),))[0] == 403
    assert get(port, "http://evil.example/report.html")[0] == 403
    assert get(port, f"http://127.0.0.1:{port}/report.html")[0] == 200


def test_other_methods_are_refused(server):
    for method in ("POST", "PUT", "DELETE", "OPTIONS"):
        assert get(server.port, "/report.html", method=method)[0] == 501


def test_a_page_replaced_by_a_link_is_no_longer_served(tmp_path):
    page = tmp_path / "r.html"
    page.write_text("<p>mine</p>")
    (tmp_path / "secret.txt").write_text(SECRET)
    with serve_report(page).start() as server:
        assert get(server.port, "/r.html")[2] == b"<p>mine</p>"
        page.unlink()
        page.symlink_to(tmp_path / "secret.txt")
        status, _, body = get(server.port, "/r.html")
        assert status == 404 and SECRET.encode() not in body


def test_binds_to_loopback_only(server):
    assert server._httpd.server_address[0] == "127.0.0.1"
    addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for address in addresses:  # another interface of this machine: nobody listens there
        with pytest.raises(OSError):
            socket.create_connection((address, server.port), timeout=2).close()


def test_a_client_that_goes_away_prints_nothing(tmp_path, capfd):
    page = tmp_path / "big.html"
    page.write_bytes(b"<p>" + b"x" * 20_000_000 + b"</p>")
    with serve_report(page).start() as server:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(f"GET /big.html HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
            s.recv(1024)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # reset, not a clean close
            s.close()
        time.sleep(0.5)
        assert get(server.port, "/big.html", method="HEAD")[0] == 200  # still serving
    err = capfd.readouterr().err
    assert "Traceback" not in err and err == ""


@pytest.fixture(scope="module")
def with_atlas(tmp_path_factory):
    d = tmp_path_factory.mktemp("atlas_served")
    model = xss_model()
    torch.manual_seed(0)
    fm.build_atlas(model, TensorDataset(torch.rand(4, 3, 32, 32)), layers="conv", k=2, progress=False).save(
        d / "atlas")
    page = fm.report(model, fm.sample_image("coffee"), cam_methods=None, atlas=d / "atlas",
                     atlas_href="../atlas").save(d / "pages" / "report.html")
    (d / "pages" / "notes.txt").write_text(SECRET)
    return d, page


def test_with_an_atlas_the_page_and_the_atlas_pages_it_links_are_served(with_atlas):
    d, page = with_atlas
    atlas = d / "atlas"
    (atlas / "patches" / "000" / "evil.png").symlink_to(d / "pages" / "notes.txt")
    files = report_files(page, atlas=atlas)
    assert files["/pages/report.html"] == page.resolve()
    assert files["/atlas/index.html"] == (atlas / "index.html").resolve()
    assert files["/atlas/layers/000.html"] == (atlas / "layers" / "000.html").resolve()
    patches = sorted(k for k in files if k.startswith("/atlas/patches/"))
    assert patches == [f"/atlas/patches/000/{c}.png" for c in range(6)] or patches == [
        f"/atlas/patches/000/{c}.jpg" for c in range(6)]
    # only files featuremaps wrote and its pages link: not the checkpoint data, not the user's notes, no links
    assert all(Path(p).suffix in (".html", ".png", ".jpg") for p in files)
    assert not any(k.endswith(("atlas.json", ".safetensors", "notes.txt", "evil.png")) for k in files)
    with serve_report(page, atlas=atlas).start() as server:
        assert server.url() == f"http://127.0.0.1:{server.port}/pages/report.html"
        for key, path in files.items():
            status, headers, body = get(server.port, key)
            assert status == 200 and body == path.read_bytes(), key
        for path in ("/atlas/atlas.json", "/atlas/", "/pages/notes.txt", "/atlas/patches/000/evil.png",
                     "/atlas/../pages/notes.txt", "/"):
            assert get(server.port, path)[0] == 404, path


def test_serve_errors_are_ours(tmp_path):
    with pytest.raises(ServeError, match="not a file"):
        report_files(tmp_path / "missing.html")
    page = tmp_path / "r.html"
    page.write_text("x")
    with pytest.raises(ServeError, match="no index.html"):
        report_files(page, atlas=tmp_path)
    with ReportServer({"/r.html": page}) as first:
        with pytest.raises(ServeError, match=f"127.0.0.1:{first.port}: .*pass another --port"):
            ReportServer({"/r.html": page}, port=first.port)
    with pytest.raises(ServeError, match="only /-rooted"):
        ReportServer({"/secret.txt": page.with_suffix(".txt")})


def _start_cli(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), *sys.path]))
    return subprocess.Popen([sys.executable, "-m", "featuremaps", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as from a terminal


def test_cli_serve_says_what_it_serves_and_serves_nothing_else(tmp_path):
    out = tmp_path / "r.html"
    (tmp_path / "secret.txt").write_text(SECRET)
    proc = _start_cli(["report", "--model", "test_report:xss_model", "--weights", "random", "--no-cams",
                       "-o", str(out), "--serve"])
    try:
        lines = []
        assert proc.stdout is not None
        while not any(line.startswith("on 127.0.0.1 only") for line in lines):
            line = proc.stdout.readline()
            assert line, (lines, proc.stderr.read() if proc.stderr else "")
            lines.append(line)
        url = next(line.split()[1] for line in lines if line.startswith("serving "))
        port = int(url.split(":")[2].split("/")[0])
        assert url == f"http://127.0.0.1:{port}/r.html"
        assert "this page; nothing else of the folder" in lines[-1]
        assert get(port, "/r.html")[0] == 200 and get(port, "/secret.txt")[0] == 404
        assert get(port, "/r.html", host="attacker.example")[0] == 403
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and stdout.strip().endswith("stopped") and "Traceback" not in stderr
