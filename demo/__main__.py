import sys

from .lifetime import exit_with_parent

# Before the imports below, which take seconds: a parent killed meanwhile must stop us too.
exit_with_parent()

from .app import main  # noqa: E402

sys.exit(main())
