"""Serve a saved report (and the atlas pages it links) on 127.0.0.1, and nothing else.

What this module guarantees:

* Only the files of an explicit allow-list are served: a table from URL path to
  file, built once when the server starts from the files featuremaps wrote (the
  page; with an atlas, the atlas pages and pictures its own pages link). A
  request's path is looked up in that table as is; it is never mapped onto the
  filesystem, so there are no directory listings, no ``..`` or encoded
  traversal, no other file of the folder. Everything else is a 404.
* No symbolic links: a file that is, or lies under, a link is left out of the
  table, and each file is opened without following links when it is served.
* The socket is bound to 127.0.0.1 only, and a request whose ``Host`` header is
  not ``127.0.0.1:PORT`` or ``localhost:PORT`` is refused with 403 (a web page
  cannot reach the server through a DNS name of its own: DNS rebinding).
* GET and HEAD only; a client that goes away mid-answer is not an error.
"""

from __future__ import annotations

import html.parser
import http.server
import os
import posixpath
import stat
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ..errors import FeatureMapsError

__all__ = ["ServeError", "ReportServer", "report_files", "serve_report"]

HOST = "127.0.0.1"

#: The kinds of file that are ever served, and their content types.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
}

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class ServeError(FeatureMapsError, OSError):
    """The report cannot be served: the page is missing, or the port cannot be bound.

    Example:
        >>> from featuremaps.errors import FeatureMapsError
        >>> issubclass(ServeError, FeatureMapsError)
        True
    """


def _plain_file(path: Path) -> bool:
    """True if ``path`` is a regular file reached without any symbolic link."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.path.realpath(path) == str(path)


def _real_dir(folder: str | os.PathLike[str], what: str) -> Path:
    path = Path(os.path.realpath(os.path.abspath(folder)))
    if not path.is_dir():
        raise ServeError(f"{what} {os.fspath(folder)!r} is not a folder; pass the folder the page links")
    return path


class _Links(html.parser.HTMLParser):
    """Collects the ``href`` and ``src`` attributes of a page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links.extend(v for k, v in attrs if k in ("href", "src") and v)


def _atlas_files(folder: Path, command: str = "atlas") -> list[Path]:
    """A linked folder's pages and pictures: ``index.html`` and every local file its pages link, inside ``folder``
    (an atlas, or a concepts folder, whose index links its own atlas pages)."""
    start = folder / "index.html"
    if not _plain_file(start):
        raise ServeError(f"{folder} has no index.html; pass a folder written by featuremaps {command}")
    found: dict[Path, None] = {start: None}
    todo = [start]
    while todo:
        page = todo.pop()
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc or not parts.path or parts.path.startswith("/"):
                continue  # data: URIs, other sites, fragments of the same page
            rel = posixpath.normpath(posixpath.join(page.parent.relative_to(folder).as_posix(), unquote(parts.path)))
            if rel == ".." or rel.startswith("../") or posixpath.isabs(rel):
                continue  # outside the atlas folder
            target = folder / rel
            if target in found or target.suffix.lower() not in CONTENT_TYPES or not _plain_file(target):
                continue
            found[target] = None
            if target.suffix.lower() == ".html":
                todo.append(target)
    return list(found)


def report_files(
    page: str | os.PathLike[str], *, atlas: str | os.PathLike[str] | None = None,
    concepts: str | os.PathLike[str] | None = None,
) -> dict[str, Path]:
    """The allow-list for serving a saved report: URL path -> file.

    Without an atlas the page is served as ``/<name>``. With one (the page's
    channels link to its pages), both are placed under their common folder,
    so that the page's relative links resolve: ``/<page folder>/<name>`` and
    ``/<atlas folder>/...``, the atlas's own ``index.html`` and every page and
    picture it links inside its folder. Nothing else is ever listed.

    Args:
        page: the saved report (``Report.save``).
        atlas: the atlas folder the page links (``report(atlas=...)``), if any.
        concepts: the concepts folder the page links (``report(concepts=...)``), if any: its
            ``index.html`` and every page and picture it links inside its folder, the same way.

    Returns:
        URL paths (decoded, starting with ``/``) mapped to resolved files.

    Raises:
        ServeError: the page is not a regular file, or the atlas not an atlas folder.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "report.html").write_text("<p>hi</p>")
        >>> list(report_files(d / "report.html"))
        ['/report.html']
    """
    page_path = Path(os.path.realpath(os.path.abspath(page)))
    if not _plain_file(page_path):
        raise ServeError(f"cannot serve {os.fspath(page)!r}: it is not a file; save the report first")
    linked = [(_real_dir(folder, what), what) for folder, what in ((atlas, "atlas"), (concepts, "concepts"))
              if folder is not None]
    if not linked:
        return {f"/{page_path.name}": page_path}
    files = [f for folder, what in linked for f in _atlas_files(folder, what)]
    root = Path(os.path.commonpath([page_path.parent, *(folder for folder, _ in linked)]))
    table = {"/" + page_path.relative_to(root).as_posix(): page_path}
    table.update(("/" + f.relative_to(root).as_posix(), f) for f in files)
    return table


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    files: Mapping[str, Path]
    hosts: frozenset[str]

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return  # the browser went away or idled: nothing to report
        sys.stderr.write(f"featuremaps serve: {type(exc).__name__}: {exc}\n")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    server_version = "featuremaps"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30
    error_content_type = "text/plain; charset=utf-8"
    error_message_format = "%(code)d %(message)s\n"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(body=False)

    def _answer(self, body: bool) -> None:
        hosts = self.headers.get_all("Host") or []
        target = urlsplit(self.path)
        if len(hosts) != 1 or hosts[0].strip().lower() not in self.server.hosts or (
            target.netloc and target.netloc.lower() not in self.server.hosts
        ):
            self.send_error(403)
            return
        try:
            key = unquote(target.path, errors="strict")
        except UnicodeDecodeError:
            key = ""
        path = self.server.files.get(key)
        data = _read_plain(path) if path is not None else None
        if path is None or data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPES[path.suffix.lower()])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Never echo the request back: the short standard reason only.
        super().send_error(code)

    def end_headers(self) -> None:
        for name, value in _SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # quiet: the command line says once what it serves


def _read_plain(path: Path) -> bytes | None:
    """The bytes of ``path`` if it is still a regular file reached without links, else None."""
    if os.path.realpath(path) != str(path):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read()


class ReportServer:
    """An HTTP server on 127.0.0.1 that serves the files of an allow-list and nothing else.

    Use :func:`serve_report` to make one for a saved report. ``port=0`` picks
    a free port. :meth:`serve_forever` blocks (the command line); :meth:`start`
    serves from a background thread (tests, notebooks); :meth:`close` stops.

    Args:
        files: URL path (decoded, starting with ``/``) -> file, as
            :func:`report_files` makes.
        port: the port to listen on (0: a free one).

    Raises:
        ServeError: the port cannot be bound (in use, or not allowed).

    Example:
        >>> import tempfile, pathlib, urllib.request
        >>> page = pathlib.Path(tempfile.mkdtemp()) / "r.html"
        >>> _ = page.write_text("<p>hi</p>")
        >>> with ReportServer({"/r.html": page}).start() as server:
        ...     urllib.request.urlopen(server.url("/r.html")).read()
        b'<p>hi</p>'
    """

    def __init__(self, files: Mapping[str, Path], port: int = 0) -> None:
        table = {str(k): Path(os.path.realpath(v)) for k, v in files.items()}
        for key, path in table.items():
            if not key.startswith("/") or path.suffix.lower() not in CONTENT_TYPES:
                raise ServeError(f"cannot serve {key!r} ({path.name}): only /-rooted .html and picture files")
        try:
            self._httpd = _Server((HOST, port), _Handler)
        except OSError as exc:
            raise ServeError(
                f"cannot serve on {HOST}:{port}: {exc.strerror or exc}; pass another --port, or 0 for a free one"
            ) from exc
        self.port = int(self._httpd.server_address[1])
        self._httpd.files = table
        self._httpd.hosts = frozenset({f"{HOST}:{self.port}", f"localhost:{self.port}"})
        self.files = dict(table)
        self._thread: threading.Thread | None = None

    def url(self, path: str | None = None) -> str:
        """The address of ``path`` (default: the first file, the page)."""
        key = path if path is not None else next(iter(self.files), "/")
        return f"http://{HOST}:{self.port}{quote(key)}"

    def serve_forever(self) -> None:
        """Serve until :meth:`close` (another thread) or Ctrl-C (KeyboardInterrupt propagates)."""
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> ReportServer:
        """Serve from a daemon thread; returns ``self``."""
        self._thread = threading.Thread(target=self.serve_forever, name="featuremaps-serve", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> ReportServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ReportServer({self.url()}, {len(self.files)} files)"


def serve_report(
    page: str | os.PathLike[str], *, atlas: str | os.PathLike[str] | None = None,
    concepts: str | os.PathLike[str] | None = None, port: int = 0,
) -> ReportServer:
    """A server for a saved report (and the atlas it links), not started yet.

    Args:
        page: the saved report page.
        atlas: the atlas folder the page links, if any (see :func:`report_files`).
        port: the port on 127.0.0.1 (0: a free one).

    Returns:
        A :class:`ReportServer`; ``server.url()`` is the page's address.

    Example:
        >>> import tempfile, pathlib
        >>> page = pathlib.Path(tempfile.mkdtemp()) / "r.html"
        >>> _ = page.write_text("<p>hi</p>")
        >>> with serve_report(page) as server:
        ...     server.url().endswith("/r.html")
        True
    """
    return ReportServer(report_files(page, atlas=atlas, concepts=concepts), port=port)
