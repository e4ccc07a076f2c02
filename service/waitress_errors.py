"""Waitress's own error answers in the API's JSON error format.

Waitress answers some requests before the app sees them: a body over its size limit (413),
a request line or headers it cannot parse (400), a chunked body it cannot read, a
``Content-Length`` that is not a number. Its answers are plain text, so a client of the
API would get ``{"error": ...}`` for most errors and a text page for these. The channel
class here makes those answers ``{"error": "<reason>: <detail>", "type": "<waitress
error>"}`` with the same status, and closes the connection as waitress does.
"""

from __future__ import annotations

import json

from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

__all__ = ["JsonErrorChannel", "JsonErrorTask"]


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


class JsonErrorChannel(HTTPChannel):
    """Waitress's channel, with :class:`JsonErrorTask` for the errors it answers itself."""

    error_task_class = JsonErrorTask
