"""The public ``/verify`` page: one self-contained HTML file (its style and script inline), served
with a Content Security Policy that allows exactly that style and script (by hash), requests
to this origin, and previews of the dropped file (``blob:``): nothing is fetched from anywhere
else, and nothing injected could run. The script renders answers with ``textContent`` only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

PAGE = (Path(__file__).parent / "verify.html").read_text(encoding="utf-8")


def _hashes(tag: str) -> str:
    bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, re.S)
    if not bodies:
        raise RuntimeError(f"verify.html has no inline <{tag}>")
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in bodies
    )


CSP = (
    "default-src 'none'; "
    f"script-src {_hashes('script')}; "
    f"style-src {_hashes('style')}; "
    "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
