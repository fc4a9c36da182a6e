"""Inbound triggers: signed events from other systems turned into jobs once per event."""
