"""Data flow: corpus -> segments -> labels -> rendered pieces -> tokens + metadata -> indexed dataset."""
