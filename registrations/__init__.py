"""The token registry: model, stores (SQLite default) and audience targeting.

Imports nothing from ``service``; the service wires it.
"""
