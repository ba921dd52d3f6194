"""http(s) image URLs, fetched under SECURITY.md rows 21-23 and 33.

- Only http/https, no `user:pass@`, and every address must be public (`ipaddress` is_global, also the IPv4
  inside IPv4-mapped, 6to4, Teredo and NAT64 addresses). IP literals in any spelling (`2130706433`,
  `0x7f.1`) are decoded the way a C resolver would and checked like any other address.
- A hostname is resolved once per hop; if any answer is not public the URL is refused, and the socket dials
  the validated IP itself (TLS still verifies the hostname), so a second DNS answer can never be used.
- At most MAX_REDIRECTS redirects, each re-checked; one deadline for the whole fetch; the body is read up
  to images.max_bytes and no further; the bytes must start like a PNG, JPEG, GIF or WebP file.
HTTP/1.1 is spoken with h11 (already under uvicorn), so nothing here follows proxies or environment settings.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urljoin, urlsplit

import h11

from pixdesk import __version__
from pixdesk.errors import UrlFetchDisabled, UrlFetchFailed, UrlFetchTimeout, UrlNotAllowed

MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]
Opener = Callable[..., Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def public_ip(ip: IP) -> bool:
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = [ip.ipv4_mapped, ip.sixtofour, ip.teredo[1] if ip.teredo else None]
        if ip in _NAT64:
            embedded.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if any(e is not None and not public_ip(e) for e in embedded):
            return False
    return ip.is_global and not ip.is_multicast


def literal_ip(host: str) -> IP | None:
    """The address a host string denotes by itself: dotted quads, IPv6, and legacy forms inet_aton accepts."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))  # 2130706433, 0x7f.1, 0177.0.0.1, 127.1
        except OSError:
            return None
    return None


def check_url(url: str, where: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an acceptable URL, else UrlNotAllowed naming the rule."""

    def refuse(why: str) -> UrlNotAllowed:
        return UrlNotAllowed(f"{where}: {why}", param=where)

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("the URL cannot be parsed") from None
    if parts.scheme not in ("http", "https"):
        raise refuse("only http and https URLs are fetched")
    if parts.username is not None or parts.password is not None:
        raise refuse("URLs with user:password@ are refused")
    host = parts.hostname or ""
    if not host:
        raise refuse("the URL has no host")
    if literal_ip(host) is None:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise refuse("the host name is not valid") from None
    port = port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, target


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


async def direct_opener(ip: str, port: int, *, tls: bool, server_hostname: str):
    ctx = ssl.create_default_context() if tls else None
    return await asyncio.open_connection(ip, port, ssl=ctx, server_hostname=server_hostname if tls else None)


class Fetcher:
    def __init__(
        self,
        *,
        enabled: bool,
        max_bytes: int,
        timeout_s: float,
        resolver: Resolver = system_resolver,
        opener: Opener = direct_opener,
    ):
        self.enabled, self.max_bytes, self.timeout_s = enabled, max_bytes, timeout_s
        self.resolver, self.opener = resolver, opener

    async def fetch(self, url: str, where: str) -> bytes:
        check_url(url, where)  # never-allowed URLs give 400 even when fetching is off
        if not self.enabled:
            raise UrlFetchDisabled(
                f"{where}: fetching image URLs is turned off (images.fetch_urls = false); "
                "send the image as a data: URI",
                param=where,
            )
        try:
            return await asyncio.wait_for(self._follow(url, where), self.timeout_s)
        except asyncio.TimeoutError:
            raise UrlFetchTimeout(
                f"{where}: the image URL did not answer within {self.timeout_s:g} s (images.fetch_timeout_s)",
                param=where,
            ) from None

    async def _follow(self, url: str, where: str) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            scheme, host, port, target = check_url(url, where)
            ip = await self._pinned_ip(host, port, where)
            status, location, body = await self._get(ip, scheme, host, port, target, where)
            if status not in _REDIRECTS:
                return _check_image(body, where)
            if not location:
                raise UrlFetchFailed(f"{where}: a redirect without a Location header", param=where)
            url = urljoin(url, location)
        raise UrlNotAllowed(f"{where}: more than {MAX_REDIRECTS} redirects", param=where)

    async def _pinned_ip(self, host: str, port: int, where: str) -> str:
        literal = literal_ip(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                answers = await self.resolver(host, port)
            except OSError:
                raise UrlFetchFailed(f"{where}: the host name does not resolve", param=where) from None
            addresses = []
            for a in answers:
                try:
                    addresses.append(ipaddress.ip_address(a))
                except ValueError:  # e.g. a scoped link-local fe80::1%eth0
                    raise UrlNotAllowed(
                        f"{where}: the host resolves to a non-public address", param=where
                    ) from None
        if not addresses or not all(public_ip(a) for a in addresses):
            raise UrlNotAllowed(
                f"{where}: the URL points at a loopback, private, link-local or other non-public address; "
                "only public addresses are fetched",
                param=where,
            )
        return str(addresses[0])

    async def _get(self, ip: str, scheme: str, host: str, port: int, target: str, where: str):
        try:
            reader, writer = await self.opener(ip, port, tls=scheme == "https", server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            raise UrlFetchFailed(f"{where}: cannot connect ({type(exc).__name__})", param=where) from None
        try:
            return await self._exchange(reader, writer, scheme, host, port, target, where)
        except (OSError, h11.ProtocolError) as exc:
            raise UrlFetchFailed(
                f"{where}: the server broke the HTTP exchange ({type(exc).__name__})", param=where
            ) from None
        finally:
            writer.close()

    async def _exchange(self, reader, writer, scheme, host, port, target, where):
        conn = h11.Connection(h11.CLIENT)
        default_port = 443 if scheme == "https" else 80
        name = f"[{host}]" if isinstance(literal_ip(host), ipaddress.IPv6Address) else host
        host_header = name if port == default_port else f"{name}:{port}"
        headers = [
            ("Host", host_header),
            ("User-Agent", f"pixdesk/{__version__}"),
            ("Accept", "image/*"),
            ("Connection", "close"),
        ]
        writer.write(conn.send(h11.Request(method="GET", target=target, headers=headers)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        status, location, body, size = 0, None, [], 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                fields = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
                if status in _REDIRECTS:
                    return status, fields.get("location"), b""
                if status != 200:
                    raise UrlFetchFailed(f"{where}: the server answered HTTP {status}", param=where)
                if (
                    fields.get("content-length", "").isdigit()
                    and int(fields["content-length"]) > self.max_bytes
                ):
                    raise self._too_big(where)
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self.max_bytes:
                    raise self._too_big(where)
                body.append(bytes(event.data))
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, location, b"".join(body)

    def _too_big(self, where: str) -> UrlFetchFailed:
        return UrlFetchFailed(
            f"{where}: the image is larger than {self.max_bytes} bytes (images.max_bytes)", param=where
        )


def _check_image(body: bytes, where: str) -> bytes:
    if body.startswith(_IMAGE_MAGIC) or (body[:4] == b"RIFF" and body[8:12] == b"WEBP"):
        return body
    kind = "HTML" if body.lstrip()[:1] == b"<" else "not an image"
    raise UrlFetchFailed(
        f"{where}: the URL did not return a PNG, JPEG, GIF or WebP image ({kind})", param=where
    )
