from glimp_cli.cli import main

main()
