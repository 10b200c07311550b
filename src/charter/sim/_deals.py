"""Deterministic CRM data: accounts, closed deals and their CloudEvents.

Each account and deal draws from its own random stream seeded by (seed, number),
so deal 123 has the same content whatever order runs happen to interleave in.

Deals come in two versions of the CRM's deal object (the ``schema_version``
fault switches between them at runtime):

- 1, the current one: ``stage`` is always ``closed_won``.
- 2, as if the CRM admins had shipped a change without telling anyone: a new
  field ``channel`` (``direct`` or ``partner``), and partner deals close with a
  new ``stage`` pick-list value, ``closed_won_partner``. Every other field is
  as in version 1. The starter project's schema allows both (``stage`` is any
  string, extra fields are allowed); its mapping's value map for ``stage``
  does not know the new value, so those deals fail to map: the drift the hub
  must report, not swallow.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

CURRENCIES = ("EUR", "USD", "GBP")
COUNTRIES = ("DE", "FR", "US", "GB", "NL")
ACCOUNT_COUNT = 500
OWNER_COUNT = 25
SKU_COUNT = 50
SCHEMA_VERSIONS = (1, 2)
# Version 2: the share of deals won through a partner, and their new stage.
PARTNER_SHARE = 0.3
PARTNER_STAGE = "closed_won_partner"


def rfc3339_now() -> str:
    """The current UTC time as RFC 3339 with milliseconds and a ``Z`` suffix."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def deal_id(number: int) -> str:
    """The CRM id of deal ``number``."""
    return f"D-{number:06d}"


class DealFactory:
    """Makes the same accounts and deals for the same seed."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._accounts: dict[int, dict[str, str]] = {}

    def account(self, number: int) -> dict[str, str]:
        """Account ``number``: id, name and country."""
        account = self._accounts.get(number)
        if account is None:
            rng = random.Random(f"{self._seed}:account:{number}")
            account = {
                "id": f"A-{number:05d}",
                "name": f"Account {number}",
                "country": rng.choice(COUNTRIES),
            }
            self._accounts[number] = account
        return account

    def deal(self, number: int, closed_at: str, version: int = 1) -> dict[str, Any]:
        """Closed deal ``number`` in deal object ``version`` (see the module docstring);
        ``amount`` is the sum of its lines rounded to cents."""
        if version not in SCHEMA_VERSIONS:
            raise ValueError(f"unknown deal schema version {version!r}; use 1 or 2")
        rng = random.Random(f"{self._seed}:deal:{number}")
        account = self.account(rng.randint(1, ACCOUNT_COUNT))
        items = [
            (rng.randint(1, SKU_COUNT), rng.randint(1, 10), round(rng.uniform(5, 500), 2))
            for _ in range(rng.randint(1, 4))
        ]
        deal: dict[str, Any] = {
            "id": deal_id(number),
            "account": dict(account),
            "amount": round(sum(qty * price for _, qty, price in items), 2),
            "currency": rng.choice(CURRENCIES),
            "stage": "closed_won",
            "owner_id": f"U-{rng.randint(1, OWNER_COUNT):03d}",
            "closed_at": closed_at,
            "lines": [
                {"sku": f"SKU-{sku:03d}", "qty": qty, "unit_price": price}
                for sku, qty, price in items
            ],
        }
        if version == 2:
            # A stream of its own, so that version 1's fields stay the same.
            partner = random.Random(f"{self._seed}:deal:{number}:v2").random() < PARTNER_SHARE
            deal["channel"] = "partner" if partner else "direct"
            if partner:
                deal["stage"] = PARTNER_STAGE
        return deal


def deal_closed_event(run: str, n: int, deal: dict[str, Any], time: str) -> dict[str, Any]:
    """The ``deal.closed`` CloudEvent (1.0, structured JSON) for the ``n``-th deal of ``run``."""
    return {
        "specversion": "1.0",
        "id": f"crm-{run}-{n}",
        "source": "crm.sim",
        "type": "deal.closed",
        "time": time,
        "datacontenttype": "application/json",
        "subject": deal["id"],
        "data": deal,
    }
