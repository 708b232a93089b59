from verydeep.cli.main import main

raise SystemExit(main())
