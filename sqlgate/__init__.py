"""sqlgate: differentially private SQL over data analysts never see."""
from sqlgate.errors import SqlgateError
from sqlgate.metadata import Budget, DatasetMeta, load_dataset_yaml, parse_dataset

__version__ = "0.1.0"


def __getattr__(name):
    # Imported lazily so `import sqlgate` stays light (and works while OpenDP loads).
    if name == "Gateway":
        from sqlgate.gateway import Gateway
        return Gateway
    if name == "connect":
        from sqlgate.client import connect
        return connect
    raise AttributeError(name)


__all__ = ["Gateway", "connect", "Budget", "DatasetMeta", "SqlgateError", "load_dataset_yaml",
           "parse_dataset"]
