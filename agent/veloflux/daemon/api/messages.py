"""Requests and replies as plain values, independent of sockets, so every endpoint is a
function from one to the other and tests call them without a server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from email.message import Message
from io import BufferedIOBase

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Message
    body: BufferedIOBase
    query: str = ""  # what followed "?", undecoded


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()


def json_reply(status: int, payload: object, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    body = json.dumps(payload, default=str, sort_keys=True).encode() + b"\n"
    return Reply(status, body, JSON, headers)
