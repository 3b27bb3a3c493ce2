#!/usr/bin/env bash
# Install Debian packages the tests need (Xvfb + xdotool for the real-window test, openbox + wmctrl so a
# window manager closes the window as its close button and Alt+F4 do, ffmpeg to probe
# recordings, exiftool to read snapshot DNGs, libcap-dev + a C compiler so pip can build python-prctl for
# picamera2),
# when they are missing. Needs root or sudo; otherwise says which tests will be skipped.
set -uo pipefail
need=()
command -v Xvfb >/dev/null 2>&1 || need+=(xvfb)
command -v xdotool >/dev/null 2>&1 || need+=(xdotool)
command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
command -v exiftool >/dev/null 2>&1 || need+=(libimage-exiftool-perl)
command -v openbox >/dev/null 2>&1 || need+=(openbox)
command -v wmctrl >/dev/null 2>&1 || need+=(wmctrl)
[ -e /usr/include/sys/capability.h ] || need+=(libcap-dev)
command -v gcc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
  echo "ensure_apt: cannot install ${need[*]} (not root, no sudo); tests needing them will be skipped" >&2; exit 0; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null 2>&1 || true
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
  || echo "ensure_apt: installing ${need[*]} failed; tests needing them will be skipped" >&2
exit 0
