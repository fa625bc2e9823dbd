from tokenomy.cli import main

main()
