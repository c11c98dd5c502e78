"""payments: a deliberately slow payment service. POST /charge takes 100 to 400 ms (PAYMENTS_DELAY_MS)."""

from __future__ import annotations

import os
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Handler, serve

DELAY_MS = os.environ.get("PAYMENTS_DELAY_MS", "100-400")


def delay_s() -> float:
    low, _, high = DELAY_MS.partition("-")
    return random.uniform(float(low), float(high or low)) / 1000


class Payments(Handler):
    service = "payments"
    version = "2.1.0"

    def do_GET(self) -> None:
        if not self.handle_health():
            self.send_json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/charge":
            self.send_json(404, {"error": f"no route {self.path}"})
            return
        request = self.read_json()
        time.sleep(delay_s())
        amount = request.get("amount_cents")
        if not isinstance(amount, int) or amount <= 0:
            self.send_json(422, {"error": "amount_cents must be a positive integer"})
            return
        self.send_json(
            201, {"charge_id": f"ch_{uuid.uuid4().hex[:12]}", "amount_cents": amount, "status": "paid"}
        )


if __name__ == "__main__":
    serve(Payments)
