"""The per-client privacy ledger: plain data in `ClientState.privacy`, never reset.

The ledger travels with the client's state (object store, checkpoints, `estuary resume`), so it survives
rounds, pooled-worker swaps and actor restarts; no worker keeps it. Its layout (all plain Python data):

    {"version": 1,
     "accountant": "rdp",                      # the accountant ε is reported and budgeted with
     "delta": 1e-5, "delta_source": "privacy.delta",     # or "1/n^1.1 (n=420)" under that named rule
     "accountants": {"rdp": {...}, "prv": {...}},   # Opacus state_dict() of both accountants
     "epsilon": 2.97,                          # ε after the last operation (configured accountant)
     "non_private": False,                     # True forever once anything ran with ε = ∞
     "entries": [LedgerEntry.as_dict(), ...]}  # every DP operation, refusals included

The history of both accountants is Opacus' own `(noise_multiplier, sample_rate, steps)` list, so ε can be
recomputed by anyone from the logged triples. Operations are charged *before* they run (a crash mid-way
over-counts, never under-counts).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

from estuary.config.privacy import delta_refusal, resolve_delta
from estuary.errors import EstuaryError

ACCOUNTANTS = ("rdp", "prv")
_VERSION = 1
_MAX_SIGMA = 1e4
INF = float("inf")


class PrivacyError(EstuaryError):
    """A privacy setting or model that DP training cannot work with (one line: the setting and the fix)."""


class BudgetExceeded(EstuaryError):
    """Raised by `DPTrainResult.raise_if_refused()`: a client refused DP work that would overspend."""


@dataclass(frozen=True)
class LedgerEntry:
    """One privacy-relevant operation of a client, as written to privacy.jsonl."""

    op: str  # "dp-sgd" | "non-private" | "refused" | "release"
    mechanism: str  # "subsampled-gaussian" | "none" | "post-processing"
    epsilon_after: float  # ledger ε after the operation (configured accountant; inf once non-private)
    delta: float
    accountant: str
    sigma: float | None = None  # noise multiplier
    sample_rate: float | None = None  # Poisson rate q
    steps: int = 0
    max_grad_norm: float | None = None
    clipping: str | None = None  # "ghost_bk" | "ghost" | "hooks" (which clipping ran)
    purpose: str = ""  # "train", "generator", "synthetic", ...
    detail: str = ""  # refusal reason, warning, what was released
    rng: str = ""
    client: str = ""
    strategy: str = ""
    round: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def row(self) -> dict[str, Any]:
        """The privacy.jsonl row (ε as a string when infinite, so the file stays strict JSON)."""
        row = self.as_dict()
        if math.isinf(self.epsilon_after):
            row["epsilon_after"] = "inf"
            row["warning"] = "PRIVACY DISABLED (ε = ∞): this client's data was used without DP"
        return row


@functools.lru_cache(maxsize=4096)
def _rdp_of_one_step(sigma: float, sample_rate: float) -> tuple[float, ...]:
    """Opacus' RDP of one subsampled-Gaussian step at its default orders (RDP composes by addition)."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as analysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rdp = analysis.compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS)
    return tuple(float(x) for x in rdp)


def epsilon_of(history: list[tuple[float, float, int]], delta: float, accountant: str) -> float:
    """ε of a composition of subsampled-Gaussian steps under Opacus' accountant (0 for no history).

    RDP is computed exactly as `RDPAccountant.get_epsilon` does (same orders, same conversion), with the
    per-step RDP of each (σ, q) cached, since calibration evaluates many compositions.
    """
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant, create_accountant
    from opacus.accountants.analysis import rdp as analysis

    if accountant == "rdp":
        total = [0.0] * len(RDPAccountant.DEFAULT_ALPHAS)
        for s, q, k in history:
            total = [t + int(k) * r for t, r in zip(total, _rdp_of_one_step(float(s), float(q)), strict=True)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            eps, _ = analysis.get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta)
        return float(eps)
    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(s), float(q), int(k)) for s, q, k in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha" and friends
        return float(acc.get_epsilon(delta=delta))


class PrivacyLedger:
    """A view over a client's `privacy` dict (mutated in place; plain data only)."""

    def __init__(self, data: dict[str, Any], *, accountant: str = "rdp") -> None:
        if accountant not in ACCOUNTANTS:
            raise PrivacyError(f"privacy.accountant {accountant!r} is not one of {ACCOUNTANTS}")
        self.data = data
        if not data:
            data.update(
                version=_VERSION,
                accountant=accountant,
                delta=None,
                delta_source="",
                accountants={m: {"history": [], "mechanism": m} for m in ACCOUNTANTS},
                epsilon=0.0,
                non_private=False,
                entries=[],
            )
        elif data.get("accountant") != accountant and self.history:
            raise PrivacyError(
                f"privacy.accountant is {accountant!r} but this client's ledger was kept with "
                f"{data.get('accountant')!r}; keep privacy.accountant unchanged for a run"
            )
        else:
            data["accountant"] = accountant

    # ------------------------------------------------------------------ reading
    @property
    def accountant(self) -> str:
        return str(self.data["accountant"])

    @property
    def history(self) -> list[tuple[float, float, int]]:
        raw = self.data.get("accountants", {}).get(self.data.get("accountant", "rdp"), {}).get("history", [])
        return [(float(s), float(q), int(k)) for s, q, k in raw]

    @property
    def delta(self) -> float | None:
        d = self.data.get("delta")
        return None if d is None else float(d)

    @property
    def epsilon(self) -> float:
        return INF if self.data.get("non_private") else float(self.data.get("epsilon", 0.0))

    @property
    def steps(self) -> int:
        return sum(k for _, _, k in self.history)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self.data.get("entries", []))

    # ------------------------------------------------------------------ δ
    def fix_delta(self, configured: float | str, n: int, client: str = "") -> float:
        """δ of this client (`privacy.delta`: a number, or the named rule '1/n^1.1' of its data size n): set at
        its first DP operation and unchanged afterwards. A δ at or above 1/n of the n examples about to be
        charged is refused (PrivacyError), however the run got here: the safety net behind the check made
        before the run starts (estuary.platform.preflight.check_delta)."""
        current = self.delta
        wanted, source = resolve_delta(configured, n)
        if current is not None and not isinstance(configured, str) and not math.isclose(wanted, current, rel_tol=1e-9):
            raise PrivacyError(
                f"privacy.delta={wanted:g} differs from the δ={current:g} this client's ledger was started "
                "with; keep privacy.delta unchanged for a run"
            )
        delta = wanted if current is None else current
        why = delta_refusal(delta, n, f"client {client}" if client else "this client")
        if why is not None:
            raise PrivacyError(why)
        if current is None:
            self.data["delta"] = delta
            self.data["delta_source"] = source
        return delta

    # ------------------------------------------------------------------ accounting
    def project(self, sigma: float, sample_rate: float, steps: int) -> float:
        """ε the ledger would show after `steps` more steps at (σ, q); nothing is changed."""
        delta = self._require_delta()
        return epsilon_of([*self.history, (sigma, sample_rate, steps)], delta, self.accountant)

    def calibrate(self, target_epsilon: float, sample_rate: float, steps: int, tolerance: float = 0.01) -> float:
        """The smallest σ (within `tolerance` in ε) such that history + `steps` at (σ, q) stays ≤ target.

        Raises BudgetExceeded if the history alone has come within `tolerance` of the target.
        """
        spent = self.epsilon
        if spent >= target_epsilon - tolerance:
            raise BudgetExceeded(f"ε spent {spent:.4g} has reached the target ε {target_epsilon:g}")

        def excess(sigma: float) -> float:
            return self.project(sigma, sample_rate, steps) - target_epsilon

        lo, hi = 0.5, 1.0  # bracket: excess(lo) > 0 >= excess(hi)
        f_hi = excess(hi)
        while f_hi > 0:
            lo, hi = hi, hi * 2
            if hi > _MAX_SIGMA:
                raise BudgetExceeded(
                    f"no noise multiplier ≤ {_MAX_SIGMA:g} keeps ε ≤ {target_epsilon:g} after {steps} more steps"
                )
            f_hi = excess(hi)
        f_lo = excess(lo)
        while f_lo <= 0:
            if lo < 1e-3:
                return lo
            lo, hi, f_hi = lo / 2, lo, f_lo
            f_lo = excess(lo)
        w_lo, w_hi, last = f_lo, f_hi, 0  # Illinois weights (halved when one end stays put)
        for _ in range(60):  # regula falsi on log σ; `hi` always keeps ε ≤ target
            if -f_hi <= tolerance or hi - lo <= 1e-6 * hi:
                break
            a, b = math.log(lo), math.log(hi)
            mid = math.exp(b - w_hi * (b - a) / (w_hi - w_lo))
            if not lo < mid < hi:
                mid = math.sqrt(lo * hi)
            f_mid = excess(mid)
            if f_mid > 0:
                lo, f_lo, w_lo = mid, f_mid, f_mid
                w_hi = w_hi / 2 if last == -1 else w_hi
                last = -1
            else:
                hi, f_hi, w_hi = mid, f_mid, f_mid
                w_lo = w_lo / 2 if last == 1 else w_lo
                last = 1
        return hi

    def charge(self, sigma: float, sample_rate: float, steps: int) -> float:
        """Add `steps` subsampled-Gaussian steps to both accountants (Opacus `step`); return the new ε."""
        from opacus.accountants import create_accountant

        for mech in ACCOUNTANTS:
            acc = create_accountant(mechanism=mech)
            saved = self.data["accountants"][mech]
            acc.load_state_dict({"history": [tuple(h) for h in saved["history"]], "mechanism": mech})
            for _ in range(steps):
                acc.step(noise_multiplier=sigma, sample_rate=sample_rate)
            state = acc.state_dict()
            self.data["accountants"][mech] = {
                "history": [[float(s), float(q), int(k)] for s, q, k in state["history"]],
                "mechanism": state["mechanism"],
            }
        eps = epsilon_of(self.history, self._require_delta(), self.accountant)
        self.data["epsilon"] = eps
        return INF if self.data.get("non_private") else eps

    def mark_non_private(self) -> None:
        self.data["non_private"] = True

    def append(self, entry: LedgerEntry) -> LedgerEntry:
        self.data.setdefault("entries", []).append(entry.as_dict())
        return entry

    def _require_delta(self) -> float:
        if self.delta is None:
            raise PrivacyError("the ledger has no δ yet (call fix_delta first)")
        return float(self.delta)

    # ------------------------------------------------------------------ reporting
    def summary(self) -> dict[str, Any]:
        eps = self.epsilon
        return {
            "epsilon": "inf" if math.isinf(eps) else round(eps, 6),
            "delta": self.delta,
            "delta_source": self.data.get("delta_source", ""),
            "accountant": self.accountant,
            "steps": self.steps,
            "operations": sum(1 for e in self.entries if e.get("op") in ("dp-sgd", "non-private")),
            "refusals": sum(1 for e in self.entries if e.get("op") == "refused"),
            "clipping": sorted({str(e["clipping"]) for e in self.entries if e.get("clipping")}),  # which ran
            "non_private": bool(self.data.get("non_private")),
        }


def summarize_states(states: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """client id → ledger summary, for the clients (ClientState) that have a ledger."""
    out: dict[str, dict[str, Any]] = {}
    for cid, state in sorted(states.items()):
        data = getattr(state, "privacy", None)
        if data:
            out[cid] = PrivacyLedger(data, accountant=data.get("accountant", "rdp")).summary()
    return out
