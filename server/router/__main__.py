"""python -m server.router {router,federation-domain,federation-init} ..."""
import sys

from server.router.cli import main

if __name__ == "__main__":
    sys.exit(main())
