"""The answer a service hands the HTTP layer (Reply), independent of the HTTP plumbing."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Optional

__all__ = ["Reply", "json_reply", "json_error"]


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: Dict[str, str] = field(default_factory=dict)
    action: str = "respond"  # "respond" | "drop" (close silently) | "hang" (wait, then drop)
    hang_sec: float = 0.0


def json_reply(status: int, payload: dict, headers: Optional[Dict[str, str]] = None) -> Reply:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Reply(status=status, body=body, headers=dict(headers or {}))


def json_error(status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None,
               nested: bool = False) -> Reply:
    """An error answer: v1 sends {"code", "message"} flat, v2 nests it under "error"."""
    body = {"code": code, "message": message}
    return json_reply(status, {"error": body} if nested else body, headers)
