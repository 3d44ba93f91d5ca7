"""Simulated and real small training runs that produce checkpoint series (the demo, the proxy)."""
