from lazyllm.cli import main

main()
