"""Intervention categories and which of them the OS Intervention procedure covers.

The one place the category lists live: intake classifies into them, auth refuses paid-only
ones for automated execution, the notifier explains them to the customer.
"""

from __future__ import annotations

from typing import Literal, get_args

IncludedCategory = Literal[
    "root_password_reset",
    "network_recovery",
    "remote_access_restoration",
    "boot_repair",
    "filesystem_repair",
    "service_restart",
    "diagnostics",
    "software_installation",
]
PaidOnlyCategory = Literal[
    "application_troubleshooting",
    "data_recovery",
    "performance_tuning",
    "malware_removal",
]
Category = Literal[IncludedCategory, PaidOnlyCategory]
Scope = Literal["included", "not_included"]

INCLUDED_CATEGORIES: tuple[IncludedCategory, ...] = get_args(IncludedCategory)
PAID_ONLY_CATEGORIES: tuple[PaidOnlyCategory, ...] = get_args(PaidOnlyCategory)
CATEGORIES: tuple[Category, ...] = (*INCLUDED_CATEGORIES, *PAID_ONLY_CATEGORIES)


def scope_of(category: Category) -> Scope:
    """``included`` for the eight categories the procedure covers, ``not_included`` for the
    four paid-only ones (recognised, never executed)."""
    if category in INCLUDED_CATEGORIES:
        return "included"
    if category in PAID_ONLY_CATEGORIES:
        return "not_included"
    raise ValueError(f"unknown category {category!r}")
