"""Placement: filters and weighers over host capacity, pure functions (compute issue)."""
