#!/usr/bin/env bash
# Installs what the console's browser test needs, if missing: Debian's Chromium (/usr/bin/chromium) and
# the Playwright Python package, which drives that Chromium directly. Never runs `playwright install`
# (it downloads a browser build of its own, which this project does not use).
set -euo pipefail
# A CJK font, so screenshots of Chinese invoices show characters rather than boxes.
if [ ! -x /usr/bin/chromium ] || ! fc-list 2>/dev/null | grep -qi "wenquanyi"; then
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium fonts-wqy-zenhei
fi
if ! python -c "import playwright" 2>/dev/null; then
  python -m pip install -q "playwright>=1.40"
fi
/usr/bin/chromium --version
python -c "import playwright; print('playwright', __import__('importlib.metadata').metadata.version('playwright'))"
