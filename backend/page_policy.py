"""The page's security headers, with a Content-Security-Policy that allows no inline code it does not know.

`PagePolicy(index_html)` reads `index.html` once, at start-up, and hashes each inline `<script>` (sha256, as
CSP3 `'sha256-…'` sources); `headers(runtime)` returns the headers for the MicroPython page (the default) or
the Pyodide page (`?runtime=pyodide`). Neither allows `'unsafe-inline'`; MicroPython needs only
`'wasm-unsafe-eval'` to compile its WebAssembly, and only the Pyodide page adds `'unsafe-eval'`, which Pyodide's
JavaScript glue needs (it builds functions with `new Function`). `connect-src 'self'`: the page can talk to its
own origin only.
"""

from __future__ import annotations

import base64
import hashlib
from html.parser import HTMLParser
from pathlib import Path

BASE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PYODIDE = "pyodide"


class _InlineScripts(HTMLParser):
    """Collects the text of every `<script>` without `src` (HTMLParser hands script content over verbatim)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self._inline = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script":
            self._inline = not any(name == "src" for name, _ in attrs)
            if self._inline:
                self.scripts.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._inline = False

    def handle_data(self, data: str) -> None:
        if self._inline:
            self.scripts[-1] += data


def inline_script_hashes(html: str) -> list[str]:
    """`'sha256-<base64>'` for each inline script of `html`, in document order."""
    parser = _InlineScripts()
    parser.feed(html)
    parser.close()
    return ["'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'" for s in parser.scripts]


def content_security_policy(script_hashes: list[str], runtime: str | None) -> str:
    script = ["'self'", *script_hashes, "'wasm-unsafe-eval'"]
    if runtime == PYODIDE:
        script.append("'unsafe-eval'")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src " + " ".join(script),
            "style-src 'self'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "worker-src 'self' blob:",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "form-action 'self'",
        ]
    )


class PagePolicy:
    """Headers for `index.html`, computed once from the file as it is at start-up."""

    def __init__(self, index_html: Path) -> None:
        self.script_hashes = inline_script_hashes(index_html.read_text(encoding="utf-8"))
        self._headers = {
            runtime: {**BASE_HEADERS, "Content-Security-Policy": content_security_policy(self.script_hashes, runtime)}
            for runtime in (None, PYODIDE)
        }

    def headers(self, runtime: str | None) -> dict[str, str]:
        """The MicroPython page's headers, or the Pyodide page's for `runtime == "pyodide"`."""
        return self._headers[PYODIDE if runtime == PYODIDE else None]
