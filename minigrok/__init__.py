"""minigrok: the Grok-1 mixture-of-experts transformer in readable NumPy."""

__version__ = "0.1.0"
