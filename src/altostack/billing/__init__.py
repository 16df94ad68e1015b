"""Prices, meters, orders and the ledger; money is Decimal, never float (billing issue)."""
