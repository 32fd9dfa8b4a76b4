"""Casbin models and rules, and the code that loads, validates and compiles them. No HTTP, no SQL."""
