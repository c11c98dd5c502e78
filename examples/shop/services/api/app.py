"""api: the shop's JSON API. Products, and orders that are charged through the payments service."""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Handler, serve

PAYMENTS_URL = os.environ.get("PAYMENTS_URL", "http://payments.localhost:7080").rstrip("/")
PAYMENTS_TIMEOUT_S = 5.0

PRODUCTS = [
    {"id": 1, "name": "Mesh T-shirt", "price_cents": 2000},
    {"id": 2, "name": "Sticker pack", "price_cents": 500},
    {"id": 3, "name": "Hoodie", "price_cents": 4500},
]
ORDERS: list[dict[str, object]] = []
ORDERS_LOCK = threading.Lock()


def charge(amount_cents: int) -> dict[str, object]:
    request = urllib.request.Request(
        f"{PAYMENTS_URL}/charge",
        data=json.dumps({"amount_cents": amount_cents}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=PAYMENTS_TIMEOUT_S) as response:
        result: dict[str, object] = json.loads(response.read())
        return result


class Api(Handler):
    service = "api"
    version = "1.4.2"

    def do_GET(self) -> None:
        if self.handle_health():
            return
        if self.path == "/api/products":
            self.send_json(200, PRODUCTS)
        elif self.path == "/api/orders":
            with ORDERS_LOCK:
                self.send_json(200, list(ORDERS))
        else:
            self.send_json(404, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/api/orders":
            self.send_json(404, {"error": f"no route {self.path}"})
            return
        try:
            body = self.read_json()
        except ValueError:
            self.send_json(400, {"error": "the body is not JSON"})
            return
        product = next((p for p in PRODUCTS if p["id"] == body.get("product_id")), None)
        if product is None:
            self.send_json(404, {"error": f"no product {body.get('product_id')!r}"})
            return
        try:
            payment = charge(int(product["price_cents"]))  # type: ignore[call-overload]
        except (urllib.error.URLError, OSError, ValueError) as error:
            reason = getattr(error, "reason", error)
            self.send_json(502, {"error": f"payments is unreachable at {PAYMENTS_URL}: {reason}"})
            return
        order = {"id": len(ORDERS) + 1, "product": product["name"], "charge": payment}
        with ORDERS_LOCK:
            order["id"] = len(ORDERS) + 1
            ORDERS.append(order)
        self.send_json(201, order)


if __name__ == "__main__":
    serve(Api)
