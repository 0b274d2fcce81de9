from pylb.cli import main

raise SystemExit(main())
