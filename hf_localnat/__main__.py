"""``python -m hf_localnat`` runs the CLI (also under ``accelerate launch -m hf_localnat``)."""

import sys

from .cli import main

sys.exit(main())
