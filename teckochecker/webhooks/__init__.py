"""Push notifications from vendors: OpenAI's batch webhooks, verified (Standard Webhooks) and turned into
hints that make the daemon check one batch at once.

signature.py   the signing scheme: keys from ``whsec_`` secrets, header checks, constant-time comparison
deliveries.py  what one delivery turned out to be (the outcome enum) and the ids already delivered
receiver.py    the ASGI app serving ``POST /webhooks/openai`` on its own listener
"""
