#!/usr/bin/env bash
# tests/bench/jwt_ab.sh: instructions per request through the inbound
# listener with inbound.jwt off and on (a warm verified-token cache: every
# request carries the same ES256 token), and the cost of a first RS256 and
# ES256 verification (build/tests/jwt_bench).
#
#   tests/bench/jwt_ab.sh [-n REQUESTS] BINARY [JWT_BENCH]
#
# Both runs send the same Authorization header; "off" has no jwt: section,
# "on" requires the token on every path and forwards its sub as a header.
# The token is minted by tests/data/jwt/issuer.py (PyJWT) and valid 5 minutes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
N=20000
[[ ${1:-} == -n ]] && { N=$2; shift 2; }
BIN=$(readlink -f "${1:?usage: $0 [-n N] BINARY [JWT_BENCH]}")
JB=${2:-$(dirname "$BIN")/tests/jwt_bench}
WORK=$(mktemp -d /tmp/sidecar-jwt-ab.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
/usr/bin/python3 "$HERE/../data/jwt/issuer.py" mint "$WORK" "$(date +%s)"
TOKEN=$(sed -n 's/^es256 //p' "$WORK/tokens.txt")
cat >"$WORK/jwt.yaml" <<YAML
jwt:
  issuers:
    - {name: bench, issuer: "https://py.issuer.test", audiences: [orders], algorithms: [RS256, ES256, HS256], jwks_file: "$WORK/jwks.json"}
  rules:
    - {prefix: /, forward: {sub: x-user-id}}
YAML
echo "## inbound, JWT off"
"$HERE/instructions.sh" -n "$N" --loads inbound -H "Authorization: Bearer $TOKEN" "$BIN"
echo "## inbound, JWT on (warm cache)"
"$HERE/instructions.sh" -n "$N" --loads inbound -H "Authorization: Bearer $TOKEN" --inbound-extra "$WORK/jwt.yaml" "$BIN"
if [[ -x $JB ]]; then
    echo "## first verifications and cache hits (jwt_bench, CPU time)"
    "$JB" 2000
fi
