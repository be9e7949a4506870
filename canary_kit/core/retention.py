"""How long the ledger keeps answers (settings ledger_days, ledger_rows)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Retention:
    days: float = 30.0
    rows: int = 5_000_000
