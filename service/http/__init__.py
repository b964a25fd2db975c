"""Every HTTP route of tocsin, by job.

`server` builds the aiohttp application (health, metrics, cluster, admin routes, API keys); `push` is
`POST /v1/push`; `events` is `POST /v1/events`; `alerts` and `reports` are the operator's reads and writes;
`console` is the web console at `/ui/`; `openapi` assembles `/openapi.json`; `limits` holds the server's
read timeouts and the malformed-request log.
"""
