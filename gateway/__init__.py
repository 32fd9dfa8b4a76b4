"""The edge: the decision pipeline, quotas, approvals, override and capability tokens, routes."""
