"""Cumulocity IoT as a platform (specs/cumulocity.md): the environment a microservice gets (``env``), a thin
aiohttp client for its REST API (``client``), the tenant subscriptions (``subscriptions``) and the
Notifications 2.0 alarm stream of one tenant (``frames``, ``stream``)."""
