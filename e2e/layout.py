"""Geometry probes for the layout tests, measured in the page with `getBoundingClientRect` and `Range`.

Each function returns a list of problems (empty when the page is right), so a failing test names every
offending element at once.
"""

from __future__ import annotations

from playwright.sync_api import Page

MIN_CARD_PX = 220
MIN_TOUCH_PX = 44

PAGE_SCROLL_JS = """(width) => {
  const doc = document.documentElement;
  const out = [];
  if (doc.scrollWidth > width) out.push(`the page is ${doc.scrollWidth}px wide in a ${width}px viewport`);
  if (window.innerWidth !== width) out.push(`the layout viewport is ${window.innerWidth}px, not ${width}px (zoomed out)`);
  return out;
}"""

HEADER_JS = """() => {
  const header = document.querySelector("header.topbar");
  const parts = [...header.querySelectorAll(
    ".logo, .brand-name, #connection-status, #connection-detail, #freshness, .avatar, .user-name, [data-testid]")];
  const seen = [];
  for (const el of parts) {
    if (seen.some((other) => other.contains(el) || el.contains(other))) continue;
    const r = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (r.width < 2 || r.height < 2 || style.visibility === "hidden") continue;  // hidden, empty or visually hidden
    seen.push(el);
  }
  const name = (el) => el.id ? "#" + el.id : (el.dataset.testid ? `[data-testid=${el.dataset.testid}]` : "." + el.className);
  const out = [];
  const width = document.documentElement.clientWidth;
  for (const el of seen) {
    const r = el.getBoundingClientRect();
    if (r.left < -0.5 || r.right > width + 0.5) out.push(`${name(el)} sticks out of the screen (${r.left}..${r.right})`);
  }
  for (let i = 0; i < seen.length; i++) {
    for (let j = i + 1; j < seen.length; j++) {
      const a = seen[i].getBoundingClientRect(), b = seen[j].getBoundingClientRect();
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 0.5 && h > 0.5) out.push(`${name(seen[i])} overlaps ${name(seen[j])} (${w.toFixed(1)}x${h.toFixed(1)}px)`);
    }
  }
  return out;
}"""

BOARD_JS = """(minCard) => {
  const out = [];
  for (const card of document.querySelectorAll('[data-testid="story"]')) {
    const w = card.getBoundingClientRect().width;
    if (w < minCard) out.push(`story ${card.dataset.storyId} is ${w.toFixed(1)}px wide`);
  }
  for (const column of document.querySelectorAll(".column")) {
    const box = column.getBoundingClientRect();
    for (const el of column.querySelectorAll(".column-head h3, .column-head .count")) {
      const r = el.getBoundingClientRect();
      if (el.scrollWidth > el.clientWidth + 0.5 || r.left < box.left - 0.5 || r.right > box.right + 0.5)
        out.push(`the header of column ${column.dataset.column} is clipped: ${el.textContent}`);
    }
  }
  // a word of a title drawn on two lines has two client rects
  for (const title of document.querySelectorAll(".story-title")) {
    const node = title.firstChild;
    if (!node || node.nodeType !== Node.TEXT_NODE) continue;
    const re = /\\S+/g;
    let m;
    while ((m = re.exec(node.data))) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      if (range.getClientRects().length > 1) out.push(`"${m[0]}" is broken inside the word in "${node.data}"`);
    }
  }
  const board = document.getElementById("board");
  const style = getComputedStyle(board);
  if (board.scrollWidth > board.clientWidth + 1 && !["auto", "scroll"].includes(style.overflowX))
    out.push("the board is wider than its box but does not scroll");
  if (board.scrollWidth > board.clientWidth + 1 && style.scrollSnapType === "none")
    out.push("the board scrolls sideways without snapping to a column");
  return out;
}"""

TOUCH_JS = """(min) => {
  const out = [];
  const controls = document.querySelectorAll(
    'a[href], button, select, input:not([type="hidden"]), textarea, summary, [tabindex]:not([tabindex="-1"])');
  for (const el of controls) {
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0 || getComputedStyle(el).visibility === "hidden") continue;
    if (r.bottom <= 0 && r.top < 0) continue;  // parked above the page until focused (the skip link)
    if (r.width < min - 0.01 || r.height < min - 0.01) {
      const label = el.getAttribute("aria-label") || el.textContent.trim().slice(0, 30) || el.name || el.id;
      out.push(`${el.tagName.toLowerCase()} "${label}" is ${r.width.toFixed(1)}x${r.height.toFixed(1)}px`);
    }
  }
  return out;
}"""


def page_scroll_problems(page: Page, width: int) -> list[str]:
    return page.evaluate(PAGE_SCROLL_JS, width)


def header_problems(page: Page) -> list[str]:
    """Header parts (brand, status badge, detail, freshness, user, and anything with a test id) that
    overlap each other or leave the screen."""
    return page.evaluate(HEADER_JS)


def board_problems(page: Page) -> list[str]:
    """Cards narrower than 220 px, clipped column headers, words broken inside, a board that overflows
    without scrolling (or without snapping)."""
    return page.evaluate(BOARD_JS, MIN_CARD_PX)


def touch_problems(page: Page) -> list[str]:
    """Visible controls smaller than 44 x 44 px."""
    return page.evaluate(TOUCH_JS, MIN_TOUCH_PX)
