"""STUB (to be replaced): event bus interface."""


class EventBus: ...


def from_url(url, settings) -> EventBus:
    raise NotImplementedError
