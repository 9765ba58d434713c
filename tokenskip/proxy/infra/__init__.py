"""What the serving stands on: config and policy, backends, accounting, ledger, metrics."""
