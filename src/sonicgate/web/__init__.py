"""The browser client: plain JavaScript modules served by sonicgate at ``/``.

No build step and no CDN: the files in ``static/`` are what the browser gets.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"
