"""STUB (to be replaced): SQLite storage."""


class Store:
    def __init__(self, path: str) -> None:
        self.path = path

    def open(self) -> None: ...

    def close(self) -> None: ...

    def is_member(self, user_id: str, project_id: str) -> bool:
        raise NotImplementedError
