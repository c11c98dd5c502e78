"""web: the shop's front end. The page calls the api and the events service from the browser."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Handler, serve

HERE = Path(__file__).resolve().parent
API_URL = os.environ.get("API_URL") or os.environ.get("DEVMESH_API_URL", "http://api.localhost:7080")
EVENTS_URL = (
    os.environ.get("EVENTS_URL")
    or os.environ.get("DEVMESH_EVENTS_URL", "http://events.localhost:7080") + "/stream"
)


class Web(Handler):
    service = "web"
    version = "1.0.0"

    def do_GET(self) -> None:
        if self.handle_health():
            return
        if self.path in ("/", "/index.html"):
            self.send_text(200, (HERE / "index.html").read_text(encoding="utf-8"), "text/html; charset=utf-8")
        elif self.path == "/config.js":
            config = {"apiUrl": API_URL, "eventsUrl": EVENTS_URL, "version": self.version}
            self.send_text(200, f"window.SHOP = {json.dumps(config)};\n", "text/javascript")
        else:
            self.send_text(404, "not found\n", "text/plain")

    do_HEAD = do_GET


if __name__ == "__main__":
    serve(Web)
