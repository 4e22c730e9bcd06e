"""Helpers of the portal tests: a portal link for a user, and a browser-like
HTTP client (its own cookie jar) that opens it."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from flownexus.billing.v1 import portal_pb2

from tests.harness import Running, auth

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
RID = re.compile(r'name="request_id" value="([^"]+)"')


async def portal_link(server: Running, user: str, *, as_service: bool = True, return_url: str = "",
                      request_id: str = "") -> portal_pb2.CreatePortalSessionResponse:
    req = portal_pb2.CreatePortalSessionRequest(
        user_id=user, return_url=return_url, request_id=request_id or uuid.uuid4().hex
    )
    who = auth("platform", "service") if as_service else auth(user)
    return await server.s.portal.CreatePortalSession(req, metadata=who)


def local(server: Running, url: str) -> str:
    """A URL made with BILLING_PUBLIC_BASE_URL, on the test server's own port."""
    parts = urlsplit(url)
    return f"{server.http_base}{parts.path}" + (f"?{parts.query}" if parts.query else "")


@asynccontextmanager
async def browser_client() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: keep cookies for an IP host (the test server is on 127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def opened(server: Running, s: aiohttp.ClientSession, user: str) -> None:
    link = await portal_link(server, user)
    async with s.get(local(server, link.url), allow_redirects=False) as r:
        assert r.status == 303, await r.text()


async def fetch(s: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, str, dict[str, str]]:
    async with s.get(url, allow_redirects=False, **kw) as r:
        return r.status, await r.text(), dict(r.headers)


async def post(s: aiohttp.ClientSession, url: str, data: dict[str, str], **kw: Any) -> tuple[int, str, dict[str, str]]:
    async with s.post(url, data=data, allow_redirects=False, **kw) as r:
        return r.status, await r.text(), dict(r.headers)


async def form_tokens(s: aiohttp.ClientSession, url: str) -> dict[str, str]:
    """The hidden fields (csrf, request_id) of the page's forms."""
    status, body, _ = await fetch(s, url)
    assert status == 200, body
    csrf, rid = CSRF.search(body), RID.search(body)
    assert csrf and rid
    return {"csrf": csrf.group(1), "request_id": rid.group(1)}


async def opened_form(server: Running, s: aiohttp.ClientSession, user: str, path: str) -> tuple[str, dict[str, str]]:
    """A session for `user`, and the page at `path`: its URL and its forms' hidden fields."""
    await opened(server, s, user)
    url = f"{server.http_base}{path}"
    return url, await form_tokens(s, url)
