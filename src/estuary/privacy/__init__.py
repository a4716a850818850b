"""Client-side differential privacy: the per-client ledger, DP-SGD on LoRA SLMs, DP synthetic data, audits.

- `estuary.privacy.ledger`: `PrivacyLedger` over `ClientState.privacy` (plain data, never reset), `LedgerEntry`.
- `estuary.privacy.dp_sgd`: `dp_train_steps` (Opacus DP-SGD, ghost clipping or per-example hooks).
- `estuary.client.dp_generator`: DP generator training and labelled synthetic sampling.
- `estuary.privacy.audit`: membership-inference audit (`estuary audit RUN_DIR`).
- `estuary.privacy.canary`: canary planting and egress scanning for tests.
"""

from estuary.privacy.ledger import BudgetExceeded, LedgerEntry, PrivacyError, PrivacyLedger

__all__ = ["BudgetExceeded", "LedgerEntry", "PrivacyError", "PrivacyLedger"]
