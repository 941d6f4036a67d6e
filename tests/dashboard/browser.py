"""The dashboard in a real headless Chromium, driven by Playwright.

Run by tests/dashboard.rs, which starts the nodes and passes what this script needs as a JSON
file (argv[1]): the API ports of nodes a and b (a triangle with c) and d (alone), c's pid, d's token, the Chromium binary and
where screenshots go. Every wait is bounded; a failed expectation raises and exits non-zero
with a screenshot of the moment in the screenshot directory.
"""

import json
import os
import signal
import sys
import urllib.error
import urllib.request

from playwright.sync_api import expect, sync_playwright

WAIT_MS = 20_000
FIFTY_PORT = None


def api(port, method, path, headers=None, body=None):
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method, headers=headers or {}, data=body
    )
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def settled(page):
    """Waits (bounded) until the force layout has cooled down, so a screenshot is still."""
    page.wait_for_function(
        "() => { const s = window.__msgtier_sim; return s && s.alpha() < s.alphaMin() * 1.5; }",
        timeout=WAIT_MS,
    )


def step(name):
    print(f"-- {name}", flush=True)


def main():
    info = json.load(open(sys.argv[1]))
    shots = info["screenshots"]
    os.makedirs(shots, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=info["chromium"],
            # Root in a container has no user namespace for Chromium's sandbox.
            args=["--no-sandbox"],
        )
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        # Chromium logs every 4xx answer as a console error ("Failed to load resource"); the
        # test provokes one on purpose, so only the rest count.
        page.on(
            "console",
            lambda m: errors.append(m.text)
            if m.type == "error" and "Failed to load resource" not in m.text
            else None,
        )
        try:
            run(page, context, info, shots)
        except Exception:
            page.screenshot(path=os.path.join(shots, "failure.png"), full_page=True)
            raise
        finally:
            browser.close()
        # The script must not have thrown, nor logged errors of its own.
        assert not errors, f"the page logged errors: {errors}"


def run(page, context, info, shots):
    global FIFTY_PORT
    a, b, d = info["a_port"], info["b_port"], info["d_port"]
    FIFTY_PORT = a

    step("the page lists b and c as Active")
    page.goto(f"http://127.0.0.1:{a}/")
    page.evaluate("window.__not_reloaded = true")
    peers = page.locator("#peers tbody")
    for peer in ["b", "c"]:
        expect(peers.locator(f'tr[data-peer="{peer}"] th')).to_have_text(peer, timeout=WAIT_MS)
        expect(peers.locator(f'tr[data-peer="{peer}"] .state')).to_have_text(
            "Active", timeout=WAIT_MS
        )
    expect(page.locator("#node-id")).to_have_text("a")
    # The feed starts with what the node still keeps: the links came up before the page opened.
    expect(page.locator("#feed")).to_contain_text("b over tcp", timeout=WAIT_MS)

    step("the topology draws three nodes and their three links")
    graph = page.get_by_role("group", name="Network topology")
    expect(graph.locator("[data-node]")).to_have_count(3, timeout=WAIT_MS)
    expect(graph.locator("[data-edge]")).to_have_count(3, timeout=WAIT_MS)
    graph.locator('[data-node="b"]').click()
    expect(page.locator("#node-details")).to_contain_text("direct")
    # Keyboard: Tab reaches a node, Enter selects it.
    graph.locator('[data-node="c"]').focus()
    page.keyboard.press("Enter")
    expect(page.locator("#node-details h3")).to_have_text("c")
    # Updates leave the focused node focused (the SVG is updated in place, not redrawn).
    uptime = page.locator("#node-uptime").inner_text()
    expect(page.locator("#node-uptime")).not_to_have_text(uptime, timeout=WAIT_MS)
    focused = page.evaluate("document.activeElement.getAttribute('data-node')")
    assert focused == "c", f"focus moved to {focused!r} on an update"

    step("sending hello through the form shows the script's output")
    page.get_by_label("Target", exact=True).fill("b")
    page.get_by_label("Message", exact=True).fill("hello")
    page.get_by_role("button", name="Send", exact=True).click()
    result = page.get_by_role("status")
    expect(result).to_contain_text("hello from b", timeout=WAIT_MS)
    expect(result).to_contain_text("exited with 0")

    step("a message sent with curl appears in the feed and the inbox")
    status, body = api(b, "POST", "/send", {"target": "a"}, b"a note from b, sent with curl")
    assert status == 200, (status, body)
    expect(page.locator("#feed")).to_contain_text("a note from b, sent with curl", timeout=WAIT_MS)
    expect(page.locator("#inbox")).to_contain_text("a note from b, sent with curl", timeout=WAIT_MS)
    settled(page)
    page.screenshot(path=os.path.join(shots, "dashboard-desktop.png"), full_page=True)

    step("an error answer shows as JSON in the status element")
    page.get_by_label("Target", exact=True).fill("nobody")
    page.get_by_label("Message", exact=True).fill("x")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(result).to_contain_text("peer_not_found", timeout=WAIT_MS)

    step("c killed turns Disconnected without a reload, and nothing on the page moves")
    cards = ["#node", "#topology-card", "#peers-card", "#send-card", "#events-card"]
    before = [page.locator(c).bounding_box() for c in cards]
    os.kill(info["c_pid"], signal.SIGKILL)
    expect(peers.locator('tr[data-peer="c"] .state')).to_have_text(
        "Disconnected", timeout=WAIT_MS
    )
    expect(page.locator("#feed")).to_contain_text("peer down")
    expect(graph.locator('[data-node="c"]')).to_have_attribute("data-kind", "down")
    assert page.evaluate("window.__not_reloaded === true"), "the page was reloaded"
    after = [page.locator(c).bounding_box() for c in cards]
    for card, b, a in zip(cards, before, after):
        assert b == a, f"{card} moved or resized on an update: {b} -> {a}"

    step("sorting the table by state puts the Disconnected row last, then first")
    page.get_by_role("button", name="State", exact=True).click()
    expect(peers.locator("tr").last).to_have_attribute("data-peer", "c")
    page.get_by_role("button", name="State", exact=True).click()
    expect(peers.locator("tr").first).to_have_attribute("data-peer", "c")

    step("dark mode")
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=os.path.join(shots, "dashboard-dark.png"), full_page=True)
    page.emulate_media(color_scheme="light")

    step("a narrow screen")
    page.set_viewport_size({"width": 390, "height": 844})
    settled(page)
    page.screenshot(path=os.path.join(shots, "dashboard-narrow.png"), full_page=True)

    step("fifty nodes stay readable: no two overlap")
    fifty(context, shots)

    step("with a token: the page asks for it, refuses a wrong one, works with the right one")
    token = info["d_token"]
    tab = context.new_page()
    tab.goto(f"http://127.0.0.1:{d}/")
    dialog = tab.get_by_role("dialog")
    expect(dialog).to_be_visible(timeout=WAIT_MS)
    tab.get_by_label("API token", exact=True).fill("not-the-token-" + "x" * 16)
    tab.get_by_role("button", name="Unlock", exact=True).click()
    expect(tab.get_by_role("alert")).to_contain_text("refused", timeout=WAIT_MS)
    tab.get_by_label("API token", exact=True).fill(token)
    tab.get_by_role("button", name="Unlock", exact=True).click()
    expect(dialog).to_be_hidden(timeout=WAIT_MS)
    expect(tab.locator("#node-id")).to_have_text("d", timeout=WAIT_MS)
    expect(tab.locator("#live")).to_have_attribute("data-state", "live", timeout=WAIT_MS)
    tab.get_by_label("Target", exact=True).fill("d")
    tab.get_by_label("Message", exact=True).fill("from the token tab")
    tab.get_by_role("button", name="Send", exact=True).click()
    expect(tab.get_by_role("status")).to_contain_text("Delivered to d", timeout=WAIT_MS)
    expect(tab.locator("#feed")).to_contain_text("from the token tab", timeout=WAIT_MS)
    # The token lives in this tab only: a new tab asks again.
    fresh = context.new_page()
    fresh.goto(f"http://127.0.0.1:{d}/")
    expect(fresh.get_by_role("dialog")).to_be_visible(timeout=WAIT_MS)
    # And the API itself refuses without it.
    status, _ = api(d, "GET", "/status")
    assert status == 401, status
    status, _ = api(d, "GET", "/status", {"authorization": f"Bearer {token}"})
    assert status == 200, status
    print("ok", flush=True)


def fifty(context, shots):
    """The page against a made-up 50-node mesh (the API answered by the browser itself): every
    node drawn, none on top of another, the layout settled inside the drawing."""
    import random

    rng = random.Random(7)
    ids = [f"n{i:02}" for i in range(50)]
    edges = set()
    for i in range(50):
        edges.add((ids[i], ids[(i + 1) % 50]))
    while len(edges) < 80:
        a, b = rng.sample(ids, 2)
        edges.add((min(a, b), max(a, b)))
    edges = sorted((min(a, b), max(a, b)) for a, b in edges)
    me = ids[0]
    mine = {b if a == me else a for a, b in edges if me in (a, b)}
    topology = {
        "id": me,
        "networks": [{
            "network": "big",
            "home": True,
            "nodes": [{"id": i, "relay": i == "n49", "hops": 0 if i == me else 2} for i in ids],
            "edges": [
                {
                    "a": a, "b": b, "cost_us": rng.randint(200, 80_000),
                    "rtt_us": 500 if me in (a, b) else None,
                    "transports": ["udp"] if me in (a, b) else [],
                    "punched": False,
                }
                for a, b in edges
            ],
        }],
    }
    link = {"transport": "udp", "state": "Active", "rtt_ms": {"last": 0.5, "avg": 0.5},
            "last_heard_ms_ago": 100}
    status = {
        "id": me, "network": "big", "version": "0", "uptime_ms": 1000, "public_key": "00",
        "listeners": [], "observed_addrs": [], "foreign": {}, "punch": {}, "durable": {},
        "peers": [
            {"id": i, "state": "Active", "public_relay": i == "n49",
             "links": [link] if i in mine else [], "next_hop": None if i in mine else "n01",
             "hops": 1 if i in mine else 2}
            for i in ids[1:]
        ],
    }
    # n00 is also a public node relaying for network "home", and has a message in its outbox.
    status["foreign"] = {"home": {
        "members": ["h1", "h2"], "control_only": False, "bps_limit": 1_000_000,
        "messages_relayed": 12, "bytes_relayed": 4096, "messages_queued": 1,
        "bytes_queued": 100, "messages_dropped": 3, "bytes_dropped": 300,
        "messages_over_budget": 2,
    }}
    outbox = {"messages": [{"id": "42", "target": "n07", "status": "in_custody",
                            "custody": "n01", "expires_unix_ms": 1_900_000_000_000}]}
    answers = {"/status": status, "/topology": topology, "/config": {},
               "/messages": {"messages": []}, "/outbox": outbox}
    page = context.new_page()

    def answer(route):
        path = route.request.url.split("://", 1)[1].split("/", 1)[1].split("?")[0]
        body = answers.get("/" + path)
        if body is None:
            route.fulfill(status=404, body="{}")
        else:
            route.fulfill(status=200, content_type="application/json", body=json.dumps(body))

    for path in ["status", "topology", "config", "messages*", "outbox*", "events*"]:
        page.route(f"**/{path}", answer)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(f"http://127.0.0.1:{FIFTY_PORT}/")
    graph = page.get_by_role("group", name="Network topology")
    expect(graph.locator("[data-node]")).to_have_count(50, timeout=WAIT_MS)
    expect(graph.locator("[data-edge]")).to_have_count(len(edges))
    # Let the force layout cool down (bounded), then measure the drawn marks.
    settled(page)
    boxes = page.evaluate(
        """() => [...document.querySelectorAll('#nodes .shape')].map(e => {
             const r = e.getBoundingClientRect();
             return [r.x + r.width / 2, r.y + r.height / 2, r.width];
           })"""
    )
    area = page.locator("#topology").bounding_box()
    closest = min(
        ((x1 - x2) ** 2 + (y1 - y2) ** 2) ** 0.5
        for i, (x1, y1, _) in enumerate(boxes)
        for (x2, y2, _) in boxes[i + 1:]
    )
    widest = max(w for _, _, w in boxes)
    assert closest >= widest, f"two nodes overlap: centres {closest:.1f} px apart, marks {widest:.1f} px"
    for x, y, _ in boxes:
        assert area["x"] <= x <= area["x"] + area["width"], "a node outside the drawing"
        assert area["y"] <= y <= area["y"] + area["height"], "a node outside the drawing"
    page.locator("#topology-card").screenshot(path=os.path.join(shots, "dashboard-50-nodes.png"))
    # The outbox shows each message's status; the foreign relay view each network's figures.
    expect(page.locator('#outbox tr[data-message="42"]')).to_contain_text("in_custody (n01)")
    foreign = page.locator('#foreign tr[data-network="home"]')
    expect(page.locator("#foreign-card")).to_be_visible()
    expect(foreign).to_contain_text("h1, h2")
    expect(foreign).to_contain_text("12 (4.0 KiB)")
    expect(foreign).to_contain_text("3 (300 B)")
    page.close()


if __name__ == "__main__":
    main()
