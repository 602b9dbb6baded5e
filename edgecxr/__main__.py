from edgecxr.cli import main

main()
