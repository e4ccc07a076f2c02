"""Waitress's connection channel with two fixes for the API: its own errors in our JSON
format, and ``Expect: 100-continue`` on a request without a body.

**Errors.** Waitress answers some requests before the app sees them: a body over its size limit (413),
a request line or headers it cannot parse (400), a chunked body it cannot read, a
``Content-Length`` that is not a number. Its answers are plain text, so a client of the
API would get ``{"error": ...}`` for most errors and a text page for these. The channel
class here makes those answers ``{"error": "<reason>: <detail>", "type": "<waitress
error>"}`` with the same status, and closes the connection as waitress does.

**Expect: 100-continue without a body.** On a request whose headers say ``Expect:
100-continue`` and that has no body (a GET, or ``Content-Length: 0``), waitress 3.0 sends
``100 Continue`` and then marks the request, which was complete, as incomplete again: it
is never answered, and the client waits until the idle timeout closes the connection. Such
a request has nothing to continue; :meth:`ApiChannel.send_continue` sends nothing for it,
and it is answered like any other.
"""

from __future__ import annotations

import json

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

__all__ = ["ApiChannel", "JsonErrorTask"]


class JsonErrorTask(ErrorTask):
    """Waitress's error answer, as JSON."""

    def execute(self) -> None:
        e = self.request.error
        detail = " ".join(str(e.body).split())
        body = json.dumps({"error": f"{e.reason}: {detail}", "type": type(e).__name__}).encode()
        self.status = f"{e.code} {e.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class ApiChannel(HTTPChannel):
    """Waitress's channel, with :class:`JsonErrorTask` for the errors it answers itself, and no
    ``100 Continue`` for a request that is complete without a body."""

    error_task_class = JsonErrorTask

    def send_continue(self) -> None:
        if self.request is not None and self.request.completed:
            self.request.expect_continue = False  # nothing to continue: answer it now
            return
        super().send_continue()
