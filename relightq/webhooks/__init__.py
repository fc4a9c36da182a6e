"""Outbound webhooks: events, endpoints, signed deliveries with retries."""
