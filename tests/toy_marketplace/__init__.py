"""A fifth marketplace, "toy", defined entirely here and registered only through the plugin
setting (``ORDERSYNC_MARKETPLACE_PLUGINS=tests.toy_marketplace.marketplace``): the proof that a
marketplace is one package and nothing else in the tree lists the marketplaces."""
