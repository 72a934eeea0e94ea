from safekeeper.cli import main

main()
