"""The analyst's remote client: pandas-like frames, raw SQL, budgets and approval requests
over the sqlgate HTTP API (`sqlgate.connect`), plus a DB-API 2.0 module (`dbapi`)."""
from sqlgate.client.client import Client, Explanation, Request, connect
from sqlgate.client.errors import ConnectionFailed, ResultGone
from sqlgate.client.frame import Column, Expr, GroupBy, LazyFrame, Query

__all__ = ["Client", "Column", "ConnectionFailed", "Explanation", "Expr", "GroupBy",
           "LazyFrame", "Query", "Request", "ResultGone", "connect"]
