"""kemi/health.py: the HTTP requests the gateway refuses, and why."""
from __future__ import annotations

from kemi import health


def test_http_refusals():
    assert health.http_refusal("GET", "/metrics") is None
    assert health.http_refusal("HEAD", "/health") is None
    code, reason, body = health.http_refusal("GET", "/turn")
    assert code == 404 and "X-TURN" in body["error"]
    assert health.http_refusal("GET", "/admin")[:2] == (404, "Not Found")
    code, reason, body = health.http_refusal("POST", "/metrics")
    assert (code, reason) == (405, "Method Not Allowed") and "POST" in body["error"]
