"""The service worker that lets a reload open the page while the network is down (`/sw.js`, web/sw.js).

`register()` at boot (no-op where service workers are unavailable); `forget()` at sign-out deletes its cache, which
holds the user's last API reads.
"""

import asyncio
import json

from .ffi import is_none, js, text

CACHE = "dashboard-offline-v1"


def _available(name, owner):
    try:
        value = getattr(owner, name)
    except Exception:
        return None
    return None if value is None or is_none(value) else value


def register():
    asyncio.create_task(_register())


def forget():
    asyncio.create_task(_forget())


async def _register():
    container = _available("serviceWorker", js.navigator)
    if container is None:
        return
    try:
        await container.register("/sw.js")
        registration = await container.ready
        worker = registration.active
        if worker is not None and not is_none(worker):
            worker.postMessage(json.dumps(_loaded()))  # what this page loaded before the worker ran
    except Exception as exc:  # e.g. not a secure context
        js.console.warn("[WebSocket] offline cache unavailable: " + str(exc))


def _loaded():
    """This page's URL and every resource it loaded (the page shell: PyScript, the interpreter, the modules)."""
    urls = [text(js.location.pathname) + text(js.location.search)]
    entries = js.performance.getEntriesByType("resource")
    for i in range(int(entries.length)):
        urls.append(text(entries[i].name))
    return urls


async def _forget():
    caches = _available("caches", js.window)
    if caches is None:
        return
    try:
        await caches.delete(CACHE)
    except Exception:
        pass
