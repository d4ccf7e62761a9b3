"""Signed webhooks (Standard Webhooks) from a durable outbox: see README, Webhooks."""
