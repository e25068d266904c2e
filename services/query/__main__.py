"""Entry point: `python -m services.query`."""

from services.query.service import main
from shared.runtime import run

run(main(), "query")
