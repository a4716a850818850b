"""Built-in strategies; importing this package registers them."""

from estuary.strategies import baselines, crosslm, fdkt, fedmkt, noop

__all__ = ["baselines", "crosslm", "fdkt", "fedmkt", "noop"]
