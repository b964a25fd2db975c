"""Notify stages: from alert transitions to deliveries, as a pipeline of small named stages."""
