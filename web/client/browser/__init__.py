"""The browser adapter: the only package that talks to `js`, `pyscript` and `pyodide`.

Start with `client.browser.app.main()` (called by `web/main.py`).
"""
