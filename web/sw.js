// The dashboard's service worker (served as /sw.js; registered by web/client/browser/offline.py).
// Network first, always: while the server answers, every GET goes to it and nothing stale is shown. Only when the
// network fails does it answer from the last good copy, so a reload while offline still opens the page, its
// Python, and the last data the user saw, with the changes still waiting in localStorage (docs/browser.md).
// API reads are kept per token (a digest of the Authorization header is part of the cache key) and the page
// deletes the whole cache at sign-out. Writes, sign-in, the socket and metrics are never touched.
const CACHE = "dashboard-offline-v1";
const SKIP = ["/api/auth/", "/metrics", "/healthz", "/readyz", "/ws/"];

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

async function cacheKey(request) {
  const url = new URL(request.url);
  const auth = request.headers.get("Authorization");
  if (!url.pathname.startsWith("/api/") || !auth) return url.href;
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(auth));
  const hex = Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
  url.searchParams.set("__user", hex.slice(0, 32));
  return url.href;
}

async function networkFirst(request) {
  const key = await cacheKey(request);
  try {
    const response = await fetch(request);
    if (response.ok) {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put(key, copy)).catch(() => {});
    }
    return response;
  } catch (error) {
    const hit = await caches.match(key);
    if (hit) return hit;
    throw error;
  }
}

// The page sends the URLs it loaded before this worker controlled it (JSON list): keep a copy of each, so the first
// visit can already be reopened offline.
self.addEventListener("message", (event) => {
  let urls = [];
  try { urls = JSON.parse(event.data); } catch (error) { return; }
  if (!Array.isArray(urls)) return;
  event.waitUntil(caches.open(CACHE).then((cache) => Promise.all(urls.map(async (href) => {
    const url = new URL(href, self.location.origin);
    if (url.origin !== self.location.origin || url.pathname.startsWith("/api/")) return;
    if (SKIP.some((prefix) => url.pathname.startsWith(prefix)) || await cache.match(url.href)) return;
    try {
      const response = await fetch(url.href, {cache: "no-cache"});
      if (response.ok) await cache.put(url.href, response);
    } catch (error) { /* offline already: nothing to keep */ }
  }))));
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  const url = new URL(request.url);
  if (request.method !== "GET" || url.origin !== self.location.origin) return;
  if (SKIP.some((prefix) => url.pathname.startsWith(prefix))) return;
  event.respondWith(networkFirst(request));
});
