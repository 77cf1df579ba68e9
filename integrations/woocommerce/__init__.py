"""WooCommerce: REST v3 client, order payloads, mapper, webhook checks and the connector."""
