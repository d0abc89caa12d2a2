from lakebase.cli import main

main()
