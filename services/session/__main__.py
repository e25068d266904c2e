"""Entry point: `python -m services.session`."""

from services.session.service import main
from shared.runtime import run

run(main(), "session")
