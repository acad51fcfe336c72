"""``python -m beam_anon.models list | fetch | samples`` (see :func:`beam_anon.models.main`)."""
import sys

from beam_anon.models import main

sys.exit(main())
