"""The image's HEALTHCHECK: exit 0 when this container's /healthz answers 200.

It asks as the proxy does (an allowed host name, over https), so neither the host check
nor the https redirect turns it away.
"""

import os
import sys
import urllib.error
import urllib.request

host = os.getenv("DJANGO_ALLOWED_HOSTS", "localhost").split(",")[0].strip().lstrip(".")
url = f"http://127.0.0.1:{os.getenv('PORT', '8000')}/healthz"
request = urllib.request.Request(url, headers={"Host": host, "X-Forwarded-Proto": "https"})
try:
    with urllib.request.urlopen(request, timeout=4) as response:
        sys.exit(0 if response.status == 200 else 1)
except (urllib.error.URLError, OSError) as exc:
    print(f"unhealthy: {exc}", file=sys.stderr)
    sys.exit(1)
