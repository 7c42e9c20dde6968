"""The operator's commands: cli.py and what it calls (status, plan and its rates, metrics,
the dashboard, plots, check, run-chunks, the demo). Read commands never write."""
