"""Event sources: each turns what it receives into ``rules.event.Event`` and hands it on."""
