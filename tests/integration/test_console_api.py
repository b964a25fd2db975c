"""The console's HTTP side: the index at /, the docs page, the guard on /ui/api/ and the static files."""

from __future__ import annotations

from tests.integration.conftest import ADMIN, APP, Api


async def test_index_lists_the_console_the_docs_and_every_route(api: Api) -> None:
    status, body = await api.call("GET", "/", key=None)
    paths = {e["path"]: e["methods"] for e in body["endpoints"]}
    assert status == 200 and body["console"] == "/ui/" and body["docs"] == "/docs"
    assert (
        paths["/v1/push"] == ["POST"] and "DELETE" in paths["/v1/silences/{id}"] and "/ui/api/stream" in paths
    )
    async with api.http.get(api.base + "/docs") as r:
        assert r.status == 200 and "openapi.json" in await r.text()


async def test_console_api_needs_an_admin_and_answers_problems(api: Api) -> None:
    for key, status in ((None, 401), ("wrong-key-000000000000", 401), (APP, 403)):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        async with api.http.get(api.base + "/ui/api/alerts", headers=headers) as r:
            assert r.status == status and r.content_type == "application/problem+json"
            assert (await r.json())["status"] == status
    status, body = await api.call("GET", "/ui/api/alerts", key=ADMIN)
    assert status == 200 and body["alerts"] == []
    status, body = await api.call("POST", "/ui/api/rules/test", {"events": "{not json"}, key=ADMIN)
    assert status == 400 and "line 1" in body["detail"]
    status, body = await api.call("POST", "/ui/api/silences/preview", {"matchers": {"room": "~("}}, key=ADMIN)
    assert status == 400 and "matchers" in body["detail"]
    async with api.http.get(api.base + "/ui/static/console.js") as r:
        assert r.status == 200 and "signIn" in await r.text()
    async with api.http.get(api.base + "/ui/static/..%2Fconsole.py") as r:
        assert r.status == 404
