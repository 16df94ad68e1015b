"""Keyset pagination: newest first, stable, no duplicates or gaps, sane with bad cursors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from altostack.settings import Settings
from tests.support.slow_ops import KIND, plugin_settings, start_steps


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    return plugin_settings(db_url, tmp_path)


async def page(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, **params: Any
) -> dict[str, Any]:
    r = await client.get(path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == {"items", "next_cursor"}
    return body


async def walk(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, limit: int, **params: Any
) -> list[list[dict[str, Any]]]:
    """Every page of a collection, following next_cursor (bounded)."""
    pages: list[list[dict[str, Any]]] = []
    cursor = None
    for _ in range(100):
        extra = {"cursor": cursor} if cursor else {}
        body = await page(client, headers, path, limit=limit, **params, **extra)
        pages.append(body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError("pagination did not end")


async def test_paging_through_operations(client: httpx.AsyncClient, admin: dict[str, str]):
    made = [(await start_steps(client, admin, steps=1, step_seconds=0))["id"] for _ in range(12)]
    pages = await walk(client, admin, "/v1/operations", 5, kind=KIND)
    assert [len(p) for p in pages] == [5, 5, 2]
    seen = [item["id"] for p in pages for item in p]
    assert len(seen) == len(set(seen)) == 12
    assert seen == list(reversed(made))  # newest first, exactly in creation order
    created = [item["created_at"] for p in pages for item in p]
    assert created == sorted(created, reverse=True)

    # The same walk again gives the same pages: the order is stable.
    again = await walk(client, admin, "/v1/operations", 5, kind=KIND)
    assert [[i["id"] for i in p] for p in again] == [[i["id"] for i in p] for p in pages]
    # A page that ends exactly at the last item says so.
    exact = await page(client, admin, "/v1/operations", limit=12, kind=KIND)
    assert len(exact["items"]) == 12 and exact["next_cursor"] is None
    one_short = await page(client, admin, "/v1/operations", limit=11, kind=KIND)
    assert one_short["next_cursor"] == one_short["items"][-1]["id"]


async def test_new_items_do_not_shift_later_pages(client: httpx.AsyncClient, admin: dict[str, str]):
    made = [(await start_steps(client, admin, steps=1, step_seconds=0))["id"] for _ in range(6)]
    first = await page(client, admin, "/v1/operations", limit=3, kind=KIND)
    # Items created between two page requests must neither repeat nor hide older ones.
    newer = [(await start_steps(client, admin, steps=1, step_seconds=0))["id"] for _ in range(2)]
    rest = await page(
        client, admin, "/v1/operations", limit=3, kind=KIND, cursor=first["next_cursor"]
    )
    got = [i["id"] for i in first["items"] + rest["items"]]
    assert got == list(reversed(made))
    assert not set(newer) & set(got)


async def test_events_page_too(client: httpx.AsyncClient, admin: dict[str, str]):
    for _ in range(4):
        await start_steps(client, admin, steps=1, step_seconds=0)
    everything = (await page(client, admin, "/v1/events", limit=500))["items"]
    pages = await walk(client, admin, "/v1/events", 3)
    walked = [e["id"] for p in pages for e in p]
    # Operations finishing meanwhile add events at the head only; the walk has no repeats.
    assert len(walked) == len(set(walked))
    assert set(e["id"] for e in everything) <= set(walked)
    assert walked == sorted(walked, reverse=True)


async def test_bad_cursors_and_limits(client: httpx.AsyncClient, admin: dict[str, str]):
    await start_steps(client, admin, steps=1, step_seconds=0)
    for cursor in ("garbage", "op-", "zzzzzzzzzzzz", "' OR 1=1 --", "%00", "op-0000000000000000"):
        r = await client.get("/v1/operations", params={"cursor": cursor}, headers=admin)
        assert r.status_code in (200, 400), (cursor, r.text)
        if r.status_code == 200:
            assert set(r.json()) == {"items", "next_cursor"}
        else:
            assert r.json()["errors"][0]["field"] == "cursor"
    r = await client.get("/v1/operations", params={"cursor": "x" * 65}, headers=admin)
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "cursor"
    for limit in (0, -1, 501, "ten"):
        r = await client.get("/v1/events", params={"limit": limit}, headers=admin)
        assert r.status_code == 422, limit
        assert r.json()["errors"][0]["field"] == "limit"
    for limit in (1, 500):
        r = await client.get("/v1/events", params={"limit": limit}, headers=admin)
        assert r.status_code == 200
        assert len(r.json()["items"]) <= limit
