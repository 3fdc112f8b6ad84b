"""The fake Gemini answering by question, for benchmarks with many sessions at once."""

from __future__ import annotations

from typing import Any

from tests.fake_gemini import FakeGemini, RecordedRequest, Reply, _Connection


def last_question(request: RecordedRequest) -> str:
    """The text of the last user turn of a streamGenerateContent request."""
    try:
        contents = request.json["contents"]
        return str(contents[-1]["parts"][0]["text"])
    except (KeyError, IndexError, TypeError):
        return ""


class RoutedGemini(FakeGemini):
    """The fake Gemini answering by question instead of in arrival order.

    ``routes[question]`` is served every time that question is asked (so a retried
    request gets the same reply again); ``served[question]`` counts the requests.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.routes: dict[str, Reply] = {}
        self.served: dict[str, int] = {}
        self.unrouted: list[str] = []

    async def _send_reply(
        self, conn: _Connection, reply: Reply, request: RecordedRequest, keep_alive: bool
    ) -> bool:
        question = last_question(request)
        self.served[question] = self.served.get(question, 0) + 1
        routed = self.routes.get(question)
        if routed is None:
            self.unrouted.append(question)
            routed = reply
        return await super()._send_reply(conn, routed, request, keep_alive)
