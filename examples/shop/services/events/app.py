"""events: a live feed as server-sent events. GET /stream sends an event a second and a heartbeat."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Handler, serve

INTERVAL_S = float(os.environ.get("EVENTS_INTERVAL_S", "1"))
STOPPING = threading.Event()
EVENTS = ["order placed", "payment captured", "item shipped", "review posted", "stock updated"]


class Events(Handler):
    service = "events"
    version = "0.3.0"

    def do_GET(self) -> None:
        if self.handle_health():
            return
        if self.path.split("?")[0] != "/stream":
            self.send_json(404, {"error": f"no route {self.path}"})
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Access-Control-Allow-Origin", "*")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        counter = 0
        try:
            self.wfile.write(b": connected\n\n")
            self.wfile.flush()
            while not STOPPING.is_set():
                counter += 1
                payload = {"n": counter, "kind": EVENTS[counter % len(EVENTS)], "at": time.time()}
                self.wfile.write(f"id: {counter}\nevent: shop\ndata: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()
                if STOPPING.wait(INTERVAL_S):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away: nothing to clean up


if __name__ == "__main__":
    serve(Events, on_stop=STOPPING.set)
