"""ordersync: marketplace orders in, stock and status out, every effect exactly once."""
