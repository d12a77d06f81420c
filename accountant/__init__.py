"""Privacy accounting and the durable ledger (see docs/INTERFACES.md, "Accountant").

`PostgresLedger` needs psycopg 3 (`pip install "psycopg[binary]"`); it is imported lazily.
"""
from accountant.accountant import Accountant, PendingCharge
from accountant.budget import BudgetStatus
from accountant.cost import PrivacyCost, zero_cost
from accountant.ledger import Ledger
from accountant.sqlite_ledger import SqliteLedger
from sqlgate.metadata import Budget


def __getattr__(name):
    if name == "PostgresLedger":
        from accountant.postgres_ledger import PostgresLedger

        return PostgresLedger
    raise AttributeError(f"module 'accountant' has no attribute {name!r}")


__all__ = ["Accountant", "Budget", "BudgetStatus", "Ledger", "PendingCharge", "PostgresLedger",
           "PrivacyCost", "SqliteLedger", "zero_cost"]
