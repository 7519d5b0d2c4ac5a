"""A throwaway FTP server (pyftpdlib) on a free port, serving one user's home directory from a thread."""

from __future__ import annotations

import threading
from pathlib import Path
from urllib.parse import quote


class FtpServer:
    """``start()`` serves ``home`` to ``user``/``password``; ``url(path)`` is an ftp:// URL into it."""

    def __init__(self, home: Path, user: str = "tiersync", password: str = "s3cret p@ss"):
        self.home, self.user, self.password = home, user, password
        self._server = self._thread = None

    def start(self) -> FtpServer:
        from pyftpdlib.authorizers import DummyAuthorizer
        from pyftpdlib.handlers import FTPHandler
        from pyftpdlib.servers import ThreadedFTPServer

        self.home.mkdir(parents=True, exist_ok=True)
        authorizer = DummyAuthorizer()
        authorizer.add_user(self.user, self.password, str(self.home), perm="elradfmwMT")
        handler = type("Handler", (FTPHandler,), {"authorizer": authorizer})
        self._server = ThreadedFTPServer(("127.0.0.1", 0), handler)
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"timeout": 0.1}, daemon=True)
        self._thread.start()
        return self

    def url(self, path: str) -> str:
        (self.home / path).mkdir(parents=True, exist_ok=True)
        return f"ftp://{quote(self.user)}:{quote(self.password)}@127.0.0.1:{self.port}/{path}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.close_all()
            self._thread.join(5)
            self._server = None
