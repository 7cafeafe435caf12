"""Hardening found by the adversarial probe (issue 9 §2): signed links, disk full, dead workers' files."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from reelq.storage import LocalStorage
from tests.conftest import Server
from tests.test_api import assert_error

# --- signed links ----------------------------------------------------------------------------------------

ODD_SIGNATURES = ["%C3%A9", "%FF", "%00", "%E2%80%8B" * 64, "%F0%9F%8E%AC", "%ED%A0%80", "é" * 10]


@pytest.mark.parametrize("signature", ODD_SIGNATURES)
def test_non_ascii_signature_is_403_without_a_traceback(shared_server: Server, signature: str) -> None:
    before = shared_server.log()
    path = f"/v1/files/video_{uuid.uuid4()}.mp4?expires=4102444800&signature={signature}"
    for method in ("GET", "HEAD"):
        response = httpx.request(method, f"{shared_server.base_url}{path}")
        assert response.status_code == 403
        if method == "GET":
            assert assert_error(response, 403, None)["code"] == "invalid_signature"
    assert "Traceback" not in shared_server.log()[len(before) :]


def test_verify_refuses_any_string(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path, b"k" * 32)
    task_id = f"video_{uuid.uuid4()}"
    good = storage.signature(task_id, 100)
    assert storage.verify(task_id, 100, good)
    for bad in ("é", "\udcff", good[:-1] + "é", good.upper(), "", good + "0", "\x00" * 64):
        assert not storage.verify(task_id, 100, bad)
