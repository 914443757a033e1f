"""Storage: run and intervention folders of Parquet parts, on a local disk or an object
store, through the commit protocol of :mod:`.run_store`. No torch, no Ray."""

from circuitray.storage.run_store import InterventionStore, RunStore

__all__ = ["InterventionStore", "RunStore"]
