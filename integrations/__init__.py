"""Clients, payloads and mappers for the outside world: one package per marketplace, payment
provider and carrier. Shared pieces: ``http`` (the client seam), ``ratelimit`` (token buckets),
``base`` (the connector protocol), ``marketplace`` (what a marketplace declares), ``registry``
(the marketplaces: built in and plugins)."""
