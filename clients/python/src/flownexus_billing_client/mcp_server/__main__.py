import sys

from flownexus_billing_client.mcp_server.cli import main

sys.exit(main())
