"""Tenants: who a request belongs to, the cache salt that keeps tenants apart, and each
tenant's limits (docs/security.md)."""
