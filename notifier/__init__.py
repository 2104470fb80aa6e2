"""Subscriptions, filters, ownership, the sequenced notification log, and fan-out."""
