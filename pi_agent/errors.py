"""The one exception a command handler raises to send an error reply (code + human sentence)."""

from __future__ import annotations


class CommandError(Exception):
    def __init__(self, code: str, message: str, detail: dict | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail or {}
