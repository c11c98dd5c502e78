"""api: the shop's JSON API. Products, and orders that are charged through the payments service."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Handler, post_json, serve

PAYMENTS_URL = (
    os.environ.get("PAYMENTS_URL") or os.environ.get("DEVMESH_PAYMENTS_URL", "http://payments.localhost:7080")
).rstrip("/")
PAYMENTS_TIMEOUT_S = 5.0

PRODUCTS = [
    {"id": 1, "name": "Mesh T-shirt", "price_cents": 2000},
    {"id": 2, "name": "Sticker pack", "price_cents": 500},
    {"id": 3, "name": "Hoodie", "price_cents": 4500},
]
ORDERS: list[dict[str, object]] = []
ORDERS_LOCK = threading.Lock()


def charge(amount_cents: int) -> dict[str, object]:
    status, result = post_json(
        f"{PAYMENTS_URL}/charge", {"amount_cents": amount_cents}, timeout=PAYMENTS_TIMEOUT_S
    )
    if status >= 300 or not isinstance(result, dict):
        raise ValueError(f"payments answered {status}: {result}")
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
        except (OSError, ValueError) as error:
            reason = error
            self.send_json(502, {"error": f"payments is unreachable at {PAYMENTS_URL}: {reason}"})
            return
        order = {"id": len(ORDERS) + 1, "product": product["name"], "charge": payment}
        with ORDERS_LOCK:
            order["id"] = len(ORDERS) + 1
            ORDERS.append(order)
        self.send_json(201, order)


if __name__ == "__main__":
    serve(Api)
