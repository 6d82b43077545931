"""Drives the web console in Debian's Chromium, headless, with Playwright (tests/it/console.rs).

    console.py URL TOKEN STORM HELD_COUNT TAG SHOT_DIR EVIL_KEY

Opens URL, refuses a wrong token, logs in with TOKEN, opens storm STORM, expects HELD_COUNT
held messages, searches for TAG (a reply's Message-ID tag) and releases that one message with
its button. Then, from a page of another origin (a plain server on http://localhost, another
site to the browser), tries two state changes on URL: a form POST tripping EVIL_KEY and
a fetch releasing messages. Takes two screenshots into SHOT_DIR. Prints a JSON report: the id
released, and the statuses the cross-origin requests got. Exits non-zero on anything
unexpected, with the reason.
"""
import http.server
import json
import os
import re
import sys
import tempfile
import threading

from playwright.sync_api import expect, sync_playwright

url, token, storm, held_count, tag, shots, evil_key = sys.argv[1:8]
held_count = int(held_count)


class Innocent(http.server.BaseHTTPRequestHandler):
    """Serves a blank page: the other origin the cross-site requests start from."""

    def do_GET(self):
        body = b"<!doctype html><title>another site</title><p>another site</p>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

report = {}
with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="sb-chromium.", ignore_cleanup_errors=True) as profile:
    browser = p.chromium.launch_persistent_context(
        profile,
        executable_path="/usr/bin/chromium",
        headless=True,
        args=ARGS,
        viewport={"width": 1040, "height": 900},
        device_scale_factor=1,
    )
    browser.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    page = browser.pages[0] if browser.pages else browser.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(url + "/")
    token_box = page.get_by_label("Access token")
    expect(token_box).to_be_visible()

    # A wrong token is refused, and says so.
    token_box.fill("not-the-token-0123456789")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#status")).to_contain_text("wrong token")
    expect(page.locator("#app")).to_be_hidden()

    token_box.fill(token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#who-name")).to_have_text("alice")

    # The storm is listed; open it.
    open_storm = page.get_by_role("button", name=f"Open storm {storm}")
    expect(open_storm).to_be_visible()
    open_storm.click()
    expect(page.locator("#storm-title")).to_have_text(f"Storm {storm}")
    rows = page.locator("#held tbody tr")
    expect(rows).to_have_count(held_count)
    expect(page.locator("#storm-facts")).to_contain_text("Deliveries avoided")
    expect(page.locator("#chart rect.bar").first).to_be_attached()
    page.screenshot(path=os.path.join(shots, "console-storm.png"))

    # Search for one reply and release it with its button.
    page.get_by_label("Search", exact=True).fill(tag)
    expect(rows).to_have_count(1)
    release = rows.first.get_by_role("button", name=re.compile(r"^Release "))
    released_id = release.get_attribute("aria-label").removeprefix("Release ")
    release.click()
    expect(page.locator("#status")).to_contain_text("1 message(s) released")
    # Released, it leaves the held list; the storm counts one fewer.
    expect(rows).to_have_count(0)
    page.get_by_label("Search", exact=True).fill("")
    expect(rows).to_have_count(held_count - 1)
    page.get_by_label("Show", exact=True).select_option(label="held and released")
    expect(page.locator("#held tbody tr", has_text=released_id)).to_contain_text("released")
    page.evaluate("document.getElementById('held-title').scrollIntoView()")
    page.screenshot(path=os.path.join(shots, "console-held.png"))
    report["released_id"] = released_id

    # Another origin: a page of a plain server on http://localhost, another site to the
    # browser than http://127.0.0.1 (so no SameSite cookie, and a foreign Origin), on the
    # loopback too (so the browser's local-network rules do not step in first).
    other_site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Innocent)
    threading.Thread(target=other_site.serve_forever, daemon=True).start()
    other = browser.new_page()
    other.goto(f"http://localhost:{other_site.server_address[1]}/")
    statuses = {}
    with other.expect_response(lambda r: "/breakers/trip" in r.url) as form_answer:
        other.evaluate(
            """([target, key]) => {
                const f = document.createElement("form");
                f.method = "POST";
                f.action = `${target}/breakers/trip?key=${encodeURIComponent(key)}`;
                document.body.append(f);
                f.submit();
            }""",
            [url, evil_key],
        )
    statuses["form_trip"] = form_answer.value.status
    other = browser.new_page()
    other.goto(f"http://localhost:{other_site.server_address[1]}/")
    with other.expect_response(lambda r: "/api/release" in r.url) as fetch_answer:
        other.evaluate(
            """async ([target, id]) => {
                try {
                    await fetch(`${target}/api/release`, {
                        method: "POST", mode: "no-cors", credentials: "include",
                        headers: {"Content-Type": "text/plain"},
                        body: JSON.stringify({ids: [id]}),
                    });
                } catch (e) {}
            }""",
            [url, released_id],
        )
    statuses["fetch_release"] = fetch_answer.value.status
    report["cross_origin"] = statuses
    report["page_errors"] = errors
    browser.close()

if errors:
    sys.exit(f"the console's script failed: {errors}")
print(json.dumps(report))
