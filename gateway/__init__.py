"""The edge: the decision path (evaluate, quota, settle), approvals, override and capability tokens, routes."""
