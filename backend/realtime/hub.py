"""STUB (to be replaced): fan-out hub."""


class Hub:
    draining = False

    def __init__(self, settings, bus, metrics, store) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
