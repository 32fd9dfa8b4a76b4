"""The management API: organizations, users, API keys, manifests, approvals, policies, audit."""
