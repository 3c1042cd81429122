#!/usr/bin/env bash
# Everything the test suite needs on a fresh machine: the package with its CPU and test extras,
# Debian's Chromium for the editor's browser tests, and the TF Serving gRPC protos for the client test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -e ".[cpu,test]"
# tensorflow-serving-api depends on the full `tensorflow` wheel; its protos need only grpcio and protobuf.
pip install --no-deps "tensorflow-serving-api==2.21.0" || echo "tensorflow-serving-api unavailable: the gRPC client test will skip"
if ! command -v chromium >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium) \
    || echo "chromium unavailable: the editor's browser tests will skip"
fi
