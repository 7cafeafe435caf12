"""Webhooks: where a task's callback may go (targets.py), how an event is signed (signing.py) and the
loop that delivers the outbox (delivery.py). The outbox itself is database/webhooks.py."""
