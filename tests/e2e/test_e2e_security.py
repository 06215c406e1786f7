"""End-to-end, in a real browser: what a stranger holding a shared URL can and cannot do.

- A query parameter written as Markdown (a "Session expired — log in" link, an image) shows as text:
  no link to the attacker's host, and the visitor's browser fetches nothing from it.
- A folder inside a root whose weights are a symlink to a file outside the roots is refused, and the
  page never shows the absolute server path.
- Every page, opened with every request recorded: no request leaves 127.0.0.1.
"""

from __future__ import annotations

from urllib.parse import quote, urlparse

import torch
from safetensors.torch import save_file

from tests.browser import E2E, PAGES, open_page, wait_for_app

pytestmark = E2E


def _recorded(browser):  # noqa: F811
    """A fresh context and page whose every request is recorded from the very first one."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = ctx.new_page()
    seen: list[str] = []
    page.on("request", lambda req: seen.append(req.url))
    return ctx, page, seen


def _outside(urls: list[str]) -> list[str]:
    return [
        u
        for u in urls
        if urlparse(u).scheme in ("http", "https", "ws", "wss")
        and urlparse(u).hostname not in ("127.0.0.1", "localhost")
    ]


def test_markdown_in_a_shared_url_is_shown_as_text(browser, app_url):  # noqa: F811
    link = "[Session expired — log in](http://evil.example/login)"
    image = "![i](http://evil.example/pixel.png)"
    ctx, page, seen = _recorded(browser)
    try:
        page.goto(f"{app_url}/sparsity?base={quote(link + image)}")
        wait_for_app(page)
        page.get_by_text("Session expired").first.wait_for(timeout=30_000)
        links = page.locator("a[href*='evil.example']")
        assert links.count() == 0, [
            links.nth(i).evaluate("e => e.parentElement.parentElement.outerHTML") for i in range(links.count())
        ]
        assert page.locator("img[src*='evil.example']").count() == 0
        assert page.get_by_test_id("stException").count() == 0
        assert not _outside(seen), _outside(seen)  # nothing fetched from evil.example (or anywhere else)
    finally:
        ctx.close()


def test_weights_symlinked_outside_the_roots_are_refused_in_the_page(browser, app_url, app_home, tmp_path):  # noqa: F811
    outside = tmp_path / "elsewhere"  # not under the server's roots (its home and the zoo)
    outside.mkdir()
    save_file({"w": torch.ones(2, 2)}, str(outside / "model.safetensors"))
    inside = app_home / "linked-ckpt"
    inside.mkdir(exist_ok=True)
    (inside / "model.safetensors").unlink(missing_ok=True)
    (inside / "model.safetensors").symlink_to(outside / "model.safetensors")
    ctx, page = open_page(browser, f"{app_url}/workspace?base={quote(str(inside))}")
    try:
        page.get_by_text("leads outside the folders this server may read").first.wait_for(timeout=30_000)
        text = page.inner_text("body")
        assert str(outside) not in text and str(app_home) not in text
        assert page.get_by_test_id("stException").count() == 0
    finally:
        ctx.close()


def test_no_request_leaves_the_server(browser, app_url):  # noqa: F811
    ctx, page, seen = _recorded(browser)
    try:
        for name in PAGES:
            page.goto(app_url + ("" if name == "home" else f"/{name}"))
            wait_for_app(page)
        assert seen and not _outside(seen), _outside(seen)
    finally:
        ctx.close()
