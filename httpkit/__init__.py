"""Cross-cutting HTTP pieces shared by the gateway and the management API: the error body,
request ids and access logs, authentication, pagination and rate limits."""
