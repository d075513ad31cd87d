from idstitch.cli import main

main()
