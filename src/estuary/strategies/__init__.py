"""Built-in strategies; importing this package registers them."""

from estuary.strategies import baselines, crosslm, distildp, fdkt, fedavg, fedmkt, noop

__all__ = ["baselines", "crosslm", "distildp", "fdkt", "fedavg", "fedmkt", "noop"]
