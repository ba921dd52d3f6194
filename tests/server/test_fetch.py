"""SECURITY.md rows 21-23 and 33: http(s) image URLs. A canary listener proves SSRF literals never connect;
a stub resolver and dialer (FakeNet) stand in for DNS and the internet; a local server plays hostile."""

from __future__ import annotations

import ipaddress
import random
import socket
import socketserver
import threading
import time

import pytest

from pixdesk.errors import UrlNotAllowed
from pixdesk.server.fetch import check_url, literal_ip, public_ip
from tests.server.conftest import png

PUBLIC = "93.184.216.34"
IMAGE = png(24, 24, (5, 6, 7))


class Hostile(socketserver.BaseRequestHandler):
    """Serves /ok.png and the misbehaving answers of row 23 (raw bytes, so it can lie)."""

    def handle(self):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.request.recv(4096)
            if not chunk:
                return
            data += chunk
        path = data.split(b" ")[1].decode()
        send = self.request.sendall
        try:
            self.respond(path, send)
        except OSError:
            pass

    @staticmethod
    def respond(path, send):
        if path == "/ok.png":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(IMAGE) + IMAGE)
        elif path.startswith("/chain"):
            n = int(path[6:] or 0)
            send(
                b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n"
                % (b"/ok.png" if n <= 1 else b"/chain%d" % (n - 1))
            )
        elif path == "/to-private":
            send(b"HTTP/1.1 302 Found\r\nLocation: http://10.0.0.1/x.png\r\nContent-Length: 0\r\n\r\n")
        elif path == "/to-rebind":
            send(b"HTTP/1.1 301 Moved\r\nLocation: http://rebind.test/ok.png\r\nContent-Length: 0\r\n\r\n")
        elif path == "/loop":
            send(b"HTTP/1.1 307 Again\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n")
        elif path == "/drip":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n\x89")
            for _ in range(20):
                time.sleep(0.5)
                send(b"P")
        elif path == "/huge":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 2147483648\r\n\r\n")
            for _ in range(4096):
                send(b"\x00" * 65536)
        elif path == "/endless":
            send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(4096):
                send(b"10000\r\n" + b"\x00" * 65536 + b"\r\n")
        elif path == "/liar":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n" + IMAGE)
        elif path == "/html":
            body = b"<!doctype html><html><body>not an image</body></html>"
            send(
                b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            )
        else:
            send(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")


@pytest.fixture(scope="module")
def hostile(net):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    net.dns.update(
        {
            "img.test": [[PUBLIC]],
            "other.test": [["2606:2800:220:1:248:1893:25c8:1946"]],
            "local.test": [["127.0.0.1"]],
            "mixed.test": [[PUBLIC, "192.168.1.9"]],
            "rebind.test": [[PUBLIC], ["127.0.0.1"]],
        }
    )
    net.routes.update({"img.test": port, "other.test": port, "rebind.test": port})
    yield port
    server.shutdown()


@pytest.fixture()
def canary():
    """A listener on loopback that counts every connection it gets."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    sock.settimeout(0.05)
    hits, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
                hits.append(1)
                conn.close()
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1], hits
    stop.set()
    t.join()
    sock.close()


def ask_url(live, url):
    part = {"type": "image_url", "image_url": {"url": url}}
    return live.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": "m",
            "max_tokens": 1,
            "temperature": 0,
            "messages": [{"role": "user", "content": [part, "x"][:1]}],
        },
    )


def refused(live, url, status, code):
    before = live.counters()
    got, _, out = ask_url(live, url)
    assert (got, out["error"]["code"]) == (status, code), (url, out)
    assert out["error"]["param"] == "messages[0].content[0].image_url.url"
    assert live.counters() == before
    return out["error"]


# ------------------------------------------------------------------------------------------ row 21


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{p}/",
        "http://[::1]:{p}/",
        "http://[::ffff:127.0.0.1]:{p}/",
        "http://2130706433:{p}/",
        "http://0x7f.1:{p}/",
        "http://0177.0.0.1:{p}/",
        "http://127.1:{p}/",
        "http://0:{p}/",
        "http://[::]:{p}/",
        "http://localhost:{p}/",
        "http://[2002:7f00:1::]:{p}/",
        "http://[64:ff9b::7f00:1]:{p}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "https://192.168.0.1/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://local.test:{p}/",
        "http://mixed.test/ok.png",
    ],
)
def test_ssrf_literals_never_connect(live, hostile, canary, url):
    port, hits = canary
    dials = len(live.net.dials)
    net_dns = dict(live.net.dns)
    live.net.dns["localhost"] = [["127.0.0.1"]]
    refused(live, url.format(p=port), 400, "url_not_allowed")
    live.net.dns = net_dns
    time.sleep(0.1)
    assert hits == [] and len(live.net.dials) == dials


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://img.test/a.png",
        "gopher://img.test:70/_x",
        "http://user:pass@img.test/ok.png",
        "http://@img.test/ok.png",
        "http://img.test:99999/ok.png",
    ],
)
def test_other_schemes_and_credentials(live, hostile, url):
    refused(live, url, 400, "url_not_allowed")


def test_public_urls_are_fetched_through_the_pinned_ip(live, hostile):
    before = live.engine.stats()["vision_calls"]
    status, _, out = ask_url(live, "http://img.test/ok.png")
    assert status == 200, out
    assert live.net.dials[-1] == (PUBLIC, 80, "img.test")
    status, _, out = ask_url(live, "https://other.test/ok.png".replace("https", "http"))
    assert status == 200, out
    assert live.engine.stats()["vision_calls"] >= before + 1


# ------------------------------------------------------------------------------------------ row 22


def test_redirects_are_rechecked_and_bounded(live, hostile):
    assert ask_url(live, "http://img.test/chain3")[0] == 200  # three redirects: allowed
    err = refused(live, "http://img.test/chain4", 400, "url_not_allowed")
    assert "3 redirects" in err["message"]
    refused(live, "http://img.test/loop", 400, "url_not_allowed")
    dials = len(live.net.dials)
    refused(live, "http://img.test/to-private", 400, "url_not_allowed")
    assert all(ip != "10.0.0.1" for ip, _, _ in live.net.dials[dials:])


def test_dns_rebinding_uses_the_first_validated_answer(live, hostile, canary):
    live.net.dns["rebind.test"] = [[PUBLIC], ["127.0.0.1"]]
    lookups = live.net.lookups.count("rebind.test")
    status, _, out = ask_url(live, "http://rebind.test/ok.png")
    assert status == 200, out
    assert live.net.lookups.count("rebind.test") == lookups + 1  # resolved once ...
    assert live.net.dials[-1] == (PUBLIC, 80, "rebind.test")  # ... and the socket dialed the validated IP
    # the next lookup answers loopback: refused, nothing dialed
    dials = len(live.net.dials)
    refused(live, "http://img.test/to-rebind", 400, "url_not_allowed")
    assert [d[0] for d in live.net.dials[dials:]] == [PUBLIC]  # only img.test itself


# ------------------------------------------------------------------------------------------ row 23


def test_hostile_servers(live, hostile):
    timeout = 2.0  # images.fetch_timeout_s in make_settings
    start = time.monotonic()
    refused(live, "http://img.test/drip", 504, "url_fetch_timeout")
    assert time.monotonic() - start < timeout + 1.5
    for path in ("/huge", "/endless"):
        start = time.monotonic()
        err = refused(live, f"http://img.test{path}", 400, "url_fetch_failed")
        assert "images.max_bytes" in err["message"] and time.monotonic() - start < timeout
    refused(
        live, "http://img.test/liar", 400, "invalid_image"
    )  # 10 bytes read: a truncated PNG, not "repaired"
    err = refused(live, "http://img.test/html", 400, "url_fetch_failed")
    assert "HTML" in err["message"]
    refused(live, "http://img.test/missing", 400, "url_fetch_failed")
    refused(live, "http://nxdomain.test/x.png", 400, "url_fetch_failed")
    live.assert_ok_after()


# ------------------------------------------------------------------------------------------ row 33


def test_fetching_can_be_turned_off(tiny_dir, net, hostile):
    from pixdesk.server.app import create_app
    from pixdesk.server.fetch import Fetcher
    from tests.server.conftest import API_KEY, Live, ServerThread, make_engine, make_settings

    settings = make_settings(images={"fetch_urls": False})
    engine = make_engine(tiny_dir, max_batch=1)
    fetcher = Fetcher(enabled=False, max_bytes=1 << 20, timeout_s=1, resolver=net.resolve, opener=net.open)
    with ServerThread(create_app(engine, settings, API_KEY, fetcher=fetcher), settings) as srv:
        off = Live(srv.port, engine, None, net)
        dials = len(net.dials)
        err = refused(off, "http://img.test/ok.png", 403, "url_fetch_disabled")
        assert "images.fetch_urls" in err["message"]
        refused(off, "file:///etc/passwd", 400, "url_not_allowed")
        assert len(net.dials) == dials
        off.assert_ok_after()
    engine.stop()


# ------------------------------------------------------------------------------------------ the classifier


def _spellings(ip: ipaddress.IPv4Address) -> list[str]:
    n = int(ip)
    a, b, c, d = ip.packed
    return [
        str(ip),
        str(n),
        hex(n),
        f"0{oct(a)[2:]}.{b}.{c}.{d}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{hex(a)}.{hex(b)}.{hex(c)}.{hex(d)}",
        f"[::ffff:{ip}]",
        f"[2002:{a:02x}{b:02x}:{c:02x}{d:02x}::1]",
        f"[64:ff9b::{a:02x}{b:02x}:{c:02x}{d:02x}]",
    ]


def test_every_non_global_address_is_refused_in_every_spelling():
    rng = random.Random(21)
    special = [
        ipaddress.ip_address(x)
        for x in (
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.2.1",
            "240.0.0.1",
        )
    ]
    samples = special + [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(3000)]
    refused = 0
    for ip in samples:
        if ip.is_global and not ip.is_multicast:
            continue
        refused += 1
        for spelling in _spellings(ip):
            host = spelling.strip("[]")
            parsed = literal_ip(host)
            assert parsed is not None and not public_ip(parsed), spelling
            check_url(f"http://{spelling}/x.png", "u")  # well-formed: the address policy is what refuses
    assert refused > 300
    for v6 in ("::1", "fe80::1", "fc00::1", "ff02::1", "::", "2001:db8::1", "::ffff:10.0.0.1"):
        assert not public_ip(ipaddress.ip_address(v6))
    assert public_ip(ipaddress.ip_address(PUBLIC)) and public_ip(ipaddress.ip_address("2606:4700::1111"))


def test_check_url_refuses_what_it_must():
    for url in ("ftp://x/", "http://u:p@x/", "http:///x", "http://x:0x50/", "file:///etc/passwd"):
        with pytest.raises(UrlNotAllowed):
            check_url(url, "u")
