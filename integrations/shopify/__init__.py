"""Shopify: Admin GraphQL client, REST/webhook order payloads, mapper and webhook checks."""
