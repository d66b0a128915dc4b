"""uvicorn for this app: h11 with deadlines for the request head and body (slow-loris clients).

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive`` seconds, but once a client has
sent the first byte of a request it waits for the rest of the head, and for the body, forever: a client
that sends half a request line and stops holds its connection (and a file descriptor) until it goes away.
:func:`deadline_protocol` makes a small subclass of uvicorn's ``H11Protocol`` that

- closes a connection whose request head has not arrived in full within ``header_timeout`` seconds of
  the connection opening or of the previous response (with a one-line 408 when part of it came);
- closes a connection whose request body is still arriving ``body_timeout`` seconds (plus a second of
  grace) after its head, even when no route reads it; a route reading the body has already answered 408
  by then (the middleware's deadline, :mod:`.gate`).

:func:`uvicorn_config` is what ``lookalike serve`` and :func:`~lookalike.server.background.serve_in_background`
run the app with.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn import Config
from uvicorn.protocols.http.h11_impl import H11Protocol

from .responses import json_text
from .settings import ServerSettings

BODY_GRACE = 1.0  # seconds the connection outlives the middleware's 408, so the 408 goes out first


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for the request head and body (set by :func:`deadline_protocol`)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        self._track()

    def on_response_complete(self) -> None:
        self._cancel_timers()
        if not self.transport.is_closing():
            self._arm_head()  # the next request's head (keep-alive also closes an idle connection sooner)
        super().on_response_complete()  # may start a pipelined request: handle_events tracks it
        self._track()

    # --------------------------------------------------------------------------------- deadlines
    def _track(self) -> None:
        """After the parser moved on: the head is in once the client's side left IDLE; the body is in once
        it reached DONE."""
        if self.transport is None or self.transport.is_closing():
            return
        their = self.conn.their_state
        if their is not h11.IDLE and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
            if their is h11.SEND_BODY and self._body_timer is None:
                self._body_timer = self.loop.call_later(self.body_timeout + BODY_GRACE, self._body_expired)
        if their is not h11.SEND_BODY and self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _arm_head(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_expired)

    def _cancel_timers(self) -> None:
        for name in ("_head_timer", "_body_timer"):
            timer = getattr(self, name, None)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    def _head_expired(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a response is still being written (pipelining): its completion re-arms the deadline
        if self.conn.trailing_data[0]:  # part of a head came: say why before closing
            body = (json_text({"error": f"request head timeout: not received within {self.header_timeout:g} s"})
                    + "\n").encode()  # fmt: skip
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
        self.transport.close()

    def _body_expired(self) -> None:
        self._body_timer = None
        if not self.transport.is_closing() and self.conn.their_state is h11.SEND_BODY:
            self.transport.close()


def deadline_protocol(header_timeout: float, body_timeout: float) -> type[DeadlineH11Protocol]:
    """A :class:`DeadlineH11Protocol` subclass with these deadlines (uvicorn builds one per connection)."""
    return type(
        "DeadlineH11Protocol",
        (DeadlineH11Protocol,),
        {"header_timeout": float(header_timeout), "body_timeout": float(body_timeout)},
    )


def uvicorn_config(app: Any, settings: ServerSettings | None = None, **options: Any) -> Config:
    """A ``uvicorn.Config`` for ``app`` with the deadlines of ``settings`` (default: the app's own, when it
    was made by :func:`~lookalike.server.create_app`); ``options`` go to ``uvicorn.Config`` as they are."""
    if settings is None:
        state = getattr(getattr(app, "state", None), "lookalike", None)
        settings = getattr(state, "settings", None) or ServerSettings()
    options.setdefault("http", deadline_protocol(settings.header_timeout, settings.body_timeout))
    options.setdefault("timeout_keep_alive", settings.keep_alive_timeout)
    return Config(app, **options)
