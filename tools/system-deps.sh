#!/usr/bin/env bash
# System packages the integration tests use: OpenSSH's sshd (devices on loopback), Mosquitto
# (the MQTT broker of the events tests), PostgreSQL (the events collector's team database, started
# by its tests), Node.js and npm (the React Native client's tests,
# clients/react-native), poppler-utils (pdftoppm, pdftotext: the audit PDF test), nginx (the
# static server of a pull fleet's signed repository in the pull-fleet tests), espeak-ng (speech
# synthesised for the dictation example).
# Installs them with apt-get when missing and running as root; otherwise says what is missing.
set -euo pipefail
need=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v git >/dev/null 2>&1 || need+=(git)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v pdftoppm >/dev/null 2>&1 || need+=(poppler-utils)  # the audit PDF test reads the PDF
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
  || need+=(postgresql)
command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v espeak-ng >/dev/null 2>&1 || need+=(espeak-ng)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "missing system packages: ${need[*]} (install them with apt-get as root)" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
