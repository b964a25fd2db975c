"""The rule language: schema, loader with line-numbered errors, matching, state machines, templates.

This package is pure: it imports nothing from ``service`` and does no I/O beyond reading rule files.
"""
