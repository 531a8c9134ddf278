"""The page's `[WebSocket]` console output, as the browser suite reads it.

The adapter prints one readable line per telemetry record (`[WebSocket] Closed 1006`) with the record itself as
an object after it (web/client/logtext.py). `WsLog(page)` keeps every such message in order: `lines()` gives
`(console type, readable text)`, `records(event)` the objects (read from the page on first use, so read them
before the page navigates away).
"""

from __future__ import annotations

from playwright.sync_api import ConsoleMessage, Page

PREFIX = "[WebSocket] "


class WsLog:
    def __init__(self, page: Page) -> None:
        self.page = page
        self.messages: list[ConsoleMessage] = []
        self._records: dict[int, dict] = {}
        page.on("console", self._on_console)

    def _on_console(self, msg: ConsoleMessage) -> None:
        if msg.text.startswith(PREFIX):
            self.messages.append(msg)

    def __len__(self) -> int:
        return len(self.messages)

    def record(self, index: int) -> dict:
        if index not in self._records:
            args = self.messages[index].args
            value = args[1].json_value() if len(args) > 1 else {}
            self._records[index] = value if isinstance(value, dict) else {}
        return self._records[index]

    def records(self, event: str | None = None, start: int = 0) -> list[dict]:
        """The structured records from message `start` on, optionally of one event."""
        found = (self.record(i) for i in range(start, len(self.messages)))
        return [r for r in found if event is None or r.get("event") == event]

    def lines(self, start: int = 0) -> list[tuple[str, str]]:
        """`(console type, readable text)` from message `start` on ("info", "warning", "error", "debug")."""
        return [(m.type, m.args[0].json_value() if m.args else m.text) for m in self.messages[start:]]

    def wait_for(self, event: str, count: int = 1, start: int = 0, timeout_ms: int = 10_000) -> list[dict]:
        """Wait (pumping Playwright events) until `count` records of `event` were logged; return them."""
        for _ in range(max(1, timeout_ms // 50)):
            found = self.records(event, start)
            if len(found) >= count:
                return found
            self.page.wait_for_timeout(50)
        raise AssertionError(f"{len(self.records(event, start))} of {count} `{event}` records; last: {self.records()[-5:]}")
