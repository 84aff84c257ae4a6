#!/usr/bin/env bash
# System tools the tests need, installed by the project itself (the README's test command runs this):
#   dciodvfy (Debian/Ubuntu package dicom3tools) validates every DICOM object MedSeg writes.
set -euo pipefail
if command -v dciodvfy >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install dicom3tools (it provides dciodvfy) with this system's package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q dicom3tools || { $SUDO apt-get update -q && $SUDO apt-get install -y -q dicom3tools; }
command -v dciodvfy >/dev/null 2>&1
