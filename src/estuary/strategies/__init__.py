"""Built-in strategies, one module each (a `<name>_config` module beside it holds its parameters).

Nothing is imported here: `estuary.registry.get(name)` imports a strategy's module the first time the strategy is
asked for (`estuary.registry.BUILTINS`), so a run loads only the code of the strategies it executes.
"""
