"""The record of the run: the ledger (ledger.py) and its rebuild from the files
(rebuild.py), which episodes failed and why (failures.py), and the jobs' logs (logs.py)."""
