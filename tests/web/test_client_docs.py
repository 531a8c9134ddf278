"""docs/client.md stays in sync with the code it documents."""

from pathlib import Path

from client import connection
from client.runtime import Runtime

DOC = (Path(__file__).resolve().parents[2] / "docs" / "client.md").read_text()


def test_the_transition_table_in_the_docs_is_the_one_in_the_code():
    table = "\n".join(connection.transition_rows())
    assert table in DOC


def test_every_close_code_of_the_policy_is_documented():
    for code in connection.AUTH_CODES + connection.RESTART_CODES + connection.LONG_CODES:
        assert str(code) in DOC, code
    for code in (connection.CLOSE_CONNECT_TIMEOUT, connection.CLOSE_HEARTBEAT_TIMEOUT, connection.CLOSE_PROBE_TIMEOUT, connection.CLOSE_OFFLINE):
        assert str(code) in DOC, code


def test_every_public_runtime_method_is_documented():
    public = [name for name in dir(Runtime) if not name.startswith("_") and not name.startswith("link_")]
    for name in public:
        assert "rt." + name in DOC or "`" + name + "(" in DOC or name + "(" in DOC, name
