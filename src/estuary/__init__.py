"""Estuary: federated knowledge transfer between a server LLM and many client SLMs, on Ray."""

__version__ = "0.1.0"
