"""STUB (to be replaced): REST routes."""


def routes() -> list:
    return []


def exception_handlers() -> dict:
    return {}
