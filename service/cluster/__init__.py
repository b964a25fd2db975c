"""Exactly one reporter: membership, lease with terms, claims, self-fencing and the send ledger.

Pure decision logic with an injected clock (``now`` is a monotonic reading passed in); MQTT I/O is kept apart
so that every failover path is tested without waiting. See docs in ``timing.py`` for the protocol's parameters
and why they differ from the research notes' first proposal.
"""
