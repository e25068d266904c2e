"""Entry point: `python -m services.gateway`."""

from services.gateway.app import main
from shared.runtime import run

run(main(), "gateway")
