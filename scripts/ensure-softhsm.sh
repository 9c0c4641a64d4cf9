#!/usr/bin/env bash
# Install SoftHSM2 when it is missing: apt on Debian and Ubuntu, a clear
# message naming the package elsewhere.
set -euo pipefail

module=/usr/lib/softhsm/libsofthsm2.so
if command -v softhsm2-util >/dev/null 2>&1 && [ -e "$module" ]; then
  exit 0
fi

if command -v apt-get >/dev/null 2>&1; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      sudo="sudo"
    else
      echo "SoftHSM2 is missing: install the Debian package 'softhsm2' as root" >&2
      exit 1
    fi
  fi
  echo "installing SoftHSM2 (Debian package softhsm2)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq softhsm2 >/dev/null
  exit 0
fi

echo "SoftHSM2 is missing: install the 'softhsm2' package (Debian/Ubuntu)," >&2
echo "'softhsm' (Fedora, Homebrew) or set SIGIL_PKCS11_MODULE to your HSM." >&2
exit 1
