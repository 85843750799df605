from slimtune.cli.main import main

raise SystemExit(main())
