from ordersync.cli import main

main()
