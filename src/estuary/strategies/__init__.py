"""Built-in strategies; importing this package registers them."""

from estuary.strategies import baselines, noop

__all__ = ["baselines", "noop"]
