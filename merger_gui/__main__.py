from merger_gui.cli import main

raise SystemExit(main())
