"""Amazon SP-API: LWA token exchange, Orders API v0 client, order mapper (v0 and 2026-01-01)."""
